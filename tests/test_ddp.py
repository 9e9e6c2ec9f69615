"""torchrun with 2 CPU processes (gloo): after training, every rank holds the same weights and feedback.

One launch trains every rule in turn, then fine-tunes a checkpoint with its backbone frozen for the first epoch
(the file is also the worker script torchrun runs).
"""
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import biotorch

WORLD_SIZE = 2


def recipe_for(rule: str, **values):
    from biotorch.training import make_recipe

    # resnet20 has BatchNorm, whose statistics the trainer averages across ranks every epoch.
    return make_recipe({"model": "resnet20", "data": "synthetic", "rule": rule, "epochs": 1, "batch_size": 16,
                        "limit_train": 48, "alignment_every": 0, "device": "cpu", "lr": 0.05,
                        "augment": "crop_flip", "rule_options": {"mirror_samples": 8} if rule == "wm" else {},
                        **values})


# Fine-tuning kp (its B is a parameter): frozen in epoch 1, then a new DDP reducer for the whole model.
FINETUNE = dict(epochs=2, freeze_backbone_epochs=1, backbone_lr_scale=0.5)


def worker(out: Path) -> None:
    """Run by each torchrun process: 3 steps of every rule, then this rank's state_dict to a file."""
    import torch.distributed as dist

    from biotorch.training import Trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for rule in biotorch.RULES:
        trainer = Trainer(recipe_for(rule), out / rule, log=None, progress=False)
        for x, y in trainer.begin_epoch():
            trainer.step(x, y)
        trainer.end_epoch()
        state = {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, str(out / f"{rule}.rank{rank}.safetensors"))
    trainer = Trainer(recipe_for("kp", init_from=str(out / "parent"), **FINETUNE), out / "finetune", log=None,
                      progress=False)
    for epoch in range(2):
        for x, y in trainer.begin_epoch():
            trainer.step(x, y)
        trainer.end_epoch()
        state = {k: v.detach().clone().contiguous() for k, v in trainer.model.state_dict().items()}
        save_file(state, str(out / f"finetune{epoch + 1}.rank{rank}.safetensors"))
    dist.destroy_process_group()


def test_every_rank_holds_identical_weights_and_feedback_for_every_rule(tmp_path):
    torch.manual_seed(1)
    parent = biotorch.create_model("resnet20_kp", num_classes=10, in_chans=1, seed=1)
    biotorch.save_pretrained(parent, tmp_path / "parent")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD_SIZE}",
         __file__, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    for rule in biotorch.RULES:
        states = [load_file(str(tmp_path / f"{rule}.rank{r}.safetensors")) for r in range(WORLD_SIZE)]
        assert states[0].keys() == states[1].keys()
        different = [k for k in states[0] if not torch.equal(states[0][k], states[1][k])]
        assert not different, f"{rule}: ranks differ in {different}"
        feedback = [k for k in states[0] if k.rpartition(".")[2].startswith("feedback_")]
        assert bool(feedback) == (rule not in ("bp", "usf")), (rule, feedback)
        # training happened: the forward weights moved away from the seeded initialisation
        torch.manual_seed(0)
        init = biotorch.create_model(f"resnet20_{rule}", num_classes=10, in_chans=1, seed=0).state_dict()
        assert not torch.equal(init["conv1.weight"], states[0]["conv1.weight"])
        # only rank 0 wrote the run folder, and it holds a checkpoint
        assert (tmp_path / rule / "checkpoint" / "state.json").is_file()
    start = parent.state_dict()
    for epoch in (1, 2):
        states = [load_file(str(tmp_path / f"finetune{epoch}.rank{r}.safetensors")) for r in range(WORLD_SIZE)]
        assert not [k for k in states[0] if not torch.equal(states[0][k], states[1][k])], f"fine-tuning, epoch {epoch}"
        moved = {k for k in start if not torch.equal(start[k], states[0][k])}
        head = {"fc.weight", "fc.bias", "fc.feedback_weight"}
        assert moved == head if epoch == 1 else moved > head, epoch  # the backbone learns from epoch 2


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
