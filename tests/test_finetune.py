"""Fine-tuning: ``biotorch.init_from`` (head, input channels, feedback), its recipe keys, frozen backbones, resume.

Parents are tiny checkpoint folders written here (a few steps on random data); nothing reads ../shared.
"""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from timm.models import adapt_input_conv

import biotorch
from conftest import kill_and_resume, same_tensors
from biotorch import cli, hub
from biotorch.data import DATASETS
from biotorch.training import Trainer, make_recipe
from biotorch.training.trainer import default_run_dir

LABELS = tuple("abcdefghij")  # the parents' classes: not synthetic's, so a run on synthetic gets a new head
SYNTHETIC = DATASETS["synthetic"].label_names
TINY = {"model": "lenet", "data": "synthetic", "epochs": 2, "batch_size": 32, "limit_train": 128,
        "alignment_every": 1, "lr": 0.05, "device": "cpu"}


def parent_folder(folder: Path, name: str = "lenet_fa", label_names=LABELS, **kwargs) -> Path:
    """A checkpoint folder of ``name`` (one channel) after two SGD steps, its classes named ``label_names``."""
    torch.manual_seed(0)
    model = biotorch.create_model(name, in_chans=1, num_classes=len(label_names), **kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, weight_decay=1e-3)
    x, y = torch.randn(8, 1, 32, 32), torch.arange(8) % len(label_names)
    for _ in range(2):
        optimizer.zero_grad()
        biotorch.set_targets(model, y)  # for the rules that learn from them (drtp)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        biotorch.feedback_step(model)
    tag = f"parent_{name}"
    return hub.save_pretrained(model, folder, pretrained_cfg={"name": f"{name}.{tag}", "tag": tag,
                                                              "label_names": list(label_names),
                                                              "hub_id": f"me/{name}.{tag}"})


def derived_feedback(model) -> dict:
    """Feedback the layers re-derive from seeds rather than save (not in the state_dict)."""
    return {f"{name}.{b}": getattr(layer, b) for name, layer in biotorch.rule_layers(model)
            for b in layer.rule.derived if getattr(layer, b, None) is not None}


def is_feedback(key: str) -> bool:
    return key.rpartition(".")[2].startswith("feedback_")


# -- init_from: what is taken from the checkpoint -------------------------------------------------------

@pytest.mark.parametrize("rule", list(biotorch.RULES))
def test_new_head_and_adapted_input_keep_the_rest_bit_identical(tmp_path, rule):
    folder = parent_folder(tmp_path / "parent", f"lenet_{rule}")
    parent = biotorch.from_pretrained(folder).eval()
    model = biotorch.create_model(f"lenet_{rule}", num_classes=5, in_chans=3, seed=7)
    own_head = {f"head.{k}": v.clone() for k, v in model.get_classifier().state_dict().items()}
    taken = biotorch.init_from(model, folder)

    adapted = ["conv1.weight"] + (["conv1.feedback_weight"] if rule in ("kp", "wm") else [])  # learned B too
    assert (taken["head"], taken["adapted"], taken["feedback"]) == ("new", adapted, "kept")
    assert (taken["name"], taken["tag"], taken["hub_id"]) == (f"lenet_{rule}.parent_lenet_{rule}",
                                                              f"parent_lenet_{rule}", f"me/lenet_{rule}.parent_lenet_{rule}")
    mine, theirs = model.state_dict(), parent.state_dict()
    for key, value in mine.items():
        if key in own_head:                       # the model's own new head, learning with its rule
            assert torch.equal(value, own_head[key]), key
        elif key in adapted:                      # timm's helper: 1 channel → 3 copies scaled by 1/3
            assert torch.equal(value, adapt_input_conv(3, theirs[key], base_chans=1)), key
        else:                                     # everything else, feedback state included, bit for bit
            assert torch.equal(value, theirs[key]), key
    derived, parent_derived = derived_feedback(model), derived_feedback(parent)
    for key, value in derived.items():
        if key.startswith(("conv1.", "head.")):
            continue
        if biotorch.RULES[rule].drawn_at_first_forward:  # re-drawn from the same seed for the new classes
            assert value.shape[0] == 5 and parent_derived[key].shape[0] == 10, key
        else:
            assert torch.equal(value, parent_derived[key]), key

    # The rest of the network computes bit for bit what the checkpoint computes, given conv1's output.
    x = torch.randn(4, 1, 32, 32)
    model.eval()
    features = lambda m, images: m.forward_head(m.forward_features(images), pre_logits=True)  # noqa: E731
    with torch.no_grad():
        handle = model.conv1.register_forward_hook(lambda module, args, out: parent.conv1(x))
        assert torch.equal(features(model, x.repeat(1, 3, 1, 1)), features(parent, x))
        handle.remove()
        # and the adapted conv1 sees a gray image given as three equal channels as the checkpoint saw it
        torch.testing.assert_close(model.conv1(x.repeat(1, 3, 1, 1)), parent.conv1(x))
    model.train()
    biotorch.set_targets(model, torch.arange(4) % 5)  # for the rules that learn from them (drtp)
    F.cross_entropy(model(x.repeat(1, 3, 1, 1)), torch.arange(4) % 5).backward()  # it learns (dfa: B fits)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("parent_rule, rule, options", [
    ("fa", "kp", {}), ("kp", "fa", {}), ("bp", "dfa", {}), ("wm", "brsf", {}), ("fa", "fa", {"feedback_init": "xavier"}),
])
def test_feedback_is_fresh_when_the_rule_or_its_options_differ(tmp_path, parent_rule, rule, options):
    folder = parent_folder(tmp_path / "parent", f"lenet_{parent_rule}")
    parent = biotorch.from_pretrained(folder)
    model = biotorch.create_model(f"lenet_{rule}", num_classes=10, in_chans=1, seed=7, **options)
    fresh = biotorch.create_model(f"lenet_{rule}", num_classes=10, in_chans=1, seed=7, **options)
    taken = biotorch.init_from(model, folder, label_names=LABELS)
    assert (taken["head"], taken["adapted"], taken["feedback"]) == ("kept", [], "fresh")
    for key, value in model.state_dict().items():   # the run's own feedback, the checkpoint's forward weights
        expected = fresh.state_dict()[key] if is_feedback(key) else parent.state_dict()[key]
        assert torch.equal(value, expected), key
    for key, value in derived_feedback(model).items():
        assert torch.equal(value, derived_feedback(fresh)[key]), key


def test_the_head_is_kept_only_for_the_same_classes(tmp_path):
    folder = parent_folder(tmp_path / "parent", "lenet_kp")
    parent = biotorch.from_pretrained(folder).eval()
    x = torch.randn(3, 1, 32, 32)
    for label_names, head in ((LABELS, "kept"), (None, "kept"), (SYNTHETIC, "new")):  # None: the number decides
        model = biotorch.create_model("lenet_kp", num_classes=10, in_chans=1, seed=7)
        assert biotorch.init_from(model, folder, label_names=label_names)["head"] == head
        same = torch.equal(model.eval()(x), parent(x))
        assert same == (head == "kept")


def test_pretrained_in_chans_adapts_the_published_checkpoint(capsys):
    gray = biotorch.create_model("lenet_fa.fashion_mnist", pretrained=True)
    rgb = biotorch.create_model("lenet_fa.fashion_mnist", pretrained=True, in_chans=3)
    assert "conv1.weight adapted to 3 (timm's adapt_input_conv)" in capsys.readouterr().err
    assert torch.equal(rgb.conv1.weight, adapt_input_conv(3, gray.conv1.weight, base_chans=1))
    assert torch.equal(rgb.head.weight, gray.head.weight)  # the same classes: the head is kept


def test_a_mismatched_architecture_fails_in_one_line(tmp_path, capsys):
    folder = parent_folder(tmp_path / "parent", "lenet_fa")
    with pytest.raises(ValueError, match="a lenet checkpoint cannot start a mlp model"):
        biotorch.init_from(biotorch.create_model("mlp_fa", in_chans=1), folder)
    mlp = hub.save_pretrained(biotorch.create_model("mlp_fa", in_chans=1), tmp_path / "mlp")
    with pytest.raises(ValueError, match=r"does not fit mlp_fa: features.fc1.weight \(512, 1024\) vs \(512, 3072\)"):
        biotorch.init_from(biotorch.create_model("mlp_fa", in_chans=3), mlp)  # only a conv adapts its channels

    out = tmp_path / "run"
    common = ["--data", "synthetic", "--epochs", "1", "--limit-train", "32", "--no-progress", "--out", str(out)]
    assert cli.main(["train", "--model", "resnet20_fa", "--init-from", str(folder), *common]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a lenet checkpoint cannot start a resnet20 model" in err
    assert cli.main(["train", "--model", "resnet20", "--init-from", "lenet_fa.fashion_mnist", *common]) == 2
    err = capsys.readouterr().err  # a published name is checked with the recipe, before any loading
    assert err.count("\n") == 1 and "names a lenet checkpoint (lenet_fa.fashion_mnist) but 'model' is 'resnet20'" in err
    assert not out.exists()


# -- the recipe -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("values, expected", [
    ({"init_from": "hf-hub:lenet_fa", "rule": "fa"}, "a Hub id is hf-hub:<org>/<repo>"),
    ({"init_from": "lenet_fa.imagenet"}, "as a pretrained name: no pretrained weights for 'lenet_fa.imagenet'. "
                                         "Available tags: lenet_fa.fashion_mnist"),
    ({"init_from": "lenet_fx.fashion_mnist"}, "as a pretrained name: unknown model"),
    ({"model": "lenet_fa.fashion_mnist"}, "start from them with init_from (--init-from lenet_fa.fashion_mnist)"),
    ({"freeze_backbone": "maybe"}, "'freeze_backbone' must be bool"),
    ({"freeze_backbone": True, "freeze_backbone_epochs": 1}, "contradict each other: use one"),
    ({"freeze_backbone_epochs": 2}, "'freeze_backbone_epochs' (2) must be less than 'epochs' (2)"),
    ({"freeze_backbone_epochs": -1}, "'freeze_backbone_epochs' must be >= 0"),
    ({"backbone_lr_scale": 0}, "'backbone_lr_scale' must be > 0"),
    ({"backbone_lr_scale": 0.1, "freeze_backbone": True}, "does nothing with freeze_backbone: true"),
    ({"backbone_lr_scal": 0.1}, "Did you mean backbone_lr_scale"),
])
def test_bad_fine_tuning_values_fail_naming_the_key(values, expected):
    with pytest.raises(ValueError) as error:
        make_recipe({**TINY, **values})
    assert expected in str(error.value)


def test_where_a_run_starts_decides_model_and_rule_only_when_they_are_not_given(tmp_path):
    recipe = make_recipe({"data": "synthetic", "init_from": "lenet_kp.fashion_mnist"})
    assert (recipe.model, recipe.rule) == ("lenet", "kp")
    assert default_run_dir(recipe) == Path("runs/lenet_kp.synthetic-ft-lenet_kp.fashion_mnist-seed0")
    assert make_recipe({**TINY, "init_from": "lenet_kp.fashion_mnist"}).rule == "kp"
    assert make_recipe({**TINY, "rule": "fa", "init_from": "lenet_kp.fashion_mnist"}).rule == "fa"
    folder = parent_folder(tmp_path / "parent", "lenet_fa")
    with pytest.raises(ValueError, match="recipe key 'rule' is needed with init_from"):
        make_recipe({**TINY, "init_from": str(folder)})  # a folder says nothing without reading it: name the rule
    assert make_recipe({**TINY, "init_from": str(folder), "rule": "fa"}).init_from == str(folder)
    with pytest.raises(ValueError, match="a folder without config.json"):
        make_recipe({**TINY, "rule": "fa", "init_from": str(tmp_path)})


def test_fine_tuning_starts_from_the_checkpoints_recipe_unless_told_otherwise(tmp_path, capsys):
    start = {"data": "synthetic", "init_from": "lenet_fa.fashion_mnist", "batch_size": 8, "epochs": 5}
    recipe = make_recipe(start)  # lenet_fa.fashion_mnist: sgd nesterov lr 0.03 at batch 128, 100 epochs, warmup 1
    assert (recipe.optimizer, recipe.nesterov, recipe.weight_decay, recipe.schedule, recipe.augment) == (
        "sgd", True, 5e-4, "cosine", "crop")
    assert recipe.lr == pytest.approx(0.03 * 8 / 128) and recipe.warmup_epochs == pytest.approx(1 * 5 / 100)
    assert make_recipe({**start, "lr": 0.01}).lr == 0.01  # told otherwise
    adam = make_recipe(start, overrides={"optimizer": "adam"})  # another optimizer: none of the sgd values
    assert adam.lr == 0.1 and "lr" not in adam.init_from_recipe and adam.schedule == "cosine"
    assert make_recipe({**TINY, "rule": "fa"}).init_from_recipe == {}  # from scratch: the recipe's own

    # A checkpoint folder's recorded recipe (a card, a pushed run): adam's lr scales by the batch's square root,
    # a step schedule's milestones by the epochs.
    folder = parent_folder(tmp_path / "parent", "lenet_fa")
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"]["recipe"] = {"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 4,
                                          "schedule": "step", "milestones": [2, 3], "gamma": 0.5}
    (folder / "config.json").write_text(json.dumps(config))
    recipe = make_recipe({**TINY, "rule": "fa", "init_from": str(folder), "batch_size": 128, "epochs": 8})
    assert (recipe.optimizer, recipe.schedule, recipe.milestones, recipe.gamma) == ("adam", "step", [4, 6], 0.5)
    assert recipe.lr == 0.05  # TINY gives lr: the file wins
    recipe = make_recipe({**{k: v for k, v in TINY.items() if k != "lr"}, "rule": "fa", "init_from": str(folder),
                          "batch_size": 128})
    assert recipe.lr == pytest.approx(2e-3)

    # The run's first line says where its values came from; --help shows each key's default.
    out = tmp_path / "run"
    assert cli.main(["train", "--init-from", "lenet_fa.fashion_mnist", "--data", "synthetic", "--epochs", "1",
                     "--limit-train", "64", "--batch-size", "32", "--device", "cpu", "--out", str(out),
                     "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("[lenet_fa] recipe of lenet_fa.fashion_mnist: optimizer sgd, lr 0.0075 (its "
                            "0.03 at batch 128), weight_decay 0.0005, momentum 0.9, nesterov True, schedule cosine"), first
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for needle in ("--lr LR default 0.1, or from --init-from", "--epochs EPOCHS default 10 ",
                   "--betas V [V ...] default [0.9, 0.999], or from --init-from"):
        assert needle in help_text, needle


# -- the trainer ----------------------------------------------------------------------------------------

def test_frozen_backbone_stays_bit_identical_then_learns(tmp_path):
    folder = parent_folder(tmp_path / "parent", "resnet20_fa")  # BatchNorm: its statistics must stay too
    recipe = make_recipe({**TINY, "model": "resnet20", "rule": "fa", "limit_train": 64, "init_from": str(folder),
                          "freeze_backbone_epochs": 1, "backbone_lr_scale": 0.5})
    lines = []
    trainer = Trainer(recipe, tmp_path / "run", log=lines.append)
    sha = hub.recorded_sha256(hub.read_config(folder))[:12]  # the verified file's, recorded since issue 22
    assert f"init_from resnet20_fa.parent_resnet20_fa (sha256 {sha}…): new head for synthetic's classes; input " \
           "layer kept; feedback state kept (the same rule, fa)" in next(line for line in lines if "init_from" in line)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [0.025, 0.05]  # backbone, then the head
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    backbone = [k for k in start if not k.startswith("fc.")]
    for x, y in trainer.begin_epoch():
        trainer.step(x, y)
    assert trainer.model.conv1.weight.grad is None  # the backward pass stopped at the head
    trainer.end_epoch()
    after = trainer.model.state_dict()
    assert [k for k in backbone if not torch.equal(after[k], start[k])] == []  # weights and BN statistics
    assert not torch.equal(after["fc.weight"], start["fc.weight"])
    # Epoch 2: everything learns. A CUDA graph captured while the backbone was frozen holds no backward for it:
    # the step is captured again (after its eager warm-up); under DDP a new reducer covers every parameter
    # (tests/test_ddp.py).
    trainer._graph, trainer._eager_steps = "captured while frozen", 3
    batches = trainer.begin_epoch()
    assert (trainer._graph, trainer._eager_steps, trainer.frozen) == (None, 0, False)
    assert all(p.requires_grad for p in trainer.model.parameters())
    for x, y in batches:
        trainer.step(x, y)
    trainer.end_epoch()
    trainer.finish()
    after = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))  # (finish loads the best epoch)
    for key in ("conv1.weight", "bn1.running_mean", "layer3.2.conv2.weight"):
        assert not torch.equal(after[key], start[key]), key
    records = json.loads((tmp_path / "run" / "alignment.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]  # measured while frozen too
    assert all(abs(layer["gradient_cosine"]) <= 1 + 1e-6 for r in records for layer in r["layers"].values())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["init_from"]["source"] == str(folder) and metrics["init_from"]["head"] == "new"


def test_linear_probe_trains_only_the_head(tmp_path):
    folder = parent_folder(tmp_path / "parent", "lenet_kp")
    recipe = make_recipe({**TINY, "rule": "kp", "init_from": str(folder), "freeze_backbone": True})
    trainer = Trainer(recipe, tmp_path / "run", log=None)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for epoch in range(2):
        for x, y in trainer.begin_epoch():
            trainer.step(x, y)
        trainer.end_epoch()
        trainer._graph = "captured"  # frozen throughout: a captured step stays valid from epoch to epoch
    assert trainer._graph == "captured"
    changed = sorted(k for k, v in trainer.model.state_dict().items() if not torch.equal(v, start[k]))
    assert changed == ["head.bias", "head.feedback_weight", "head.weight"]  # kp's B learns with its W


def test_fine_tuning_resumes_in_process_exactly(tmp_path):
    """dfa with a new head, frozen for one epoch: resuming after it crosses the unfreezing exactly."""
    folder = parent_folder(tmp_path / "parent", "lenet_dfa")
    recipe = make_recipe({**TINY, "epochs": 3, "rule": "dfa", "optimizer": "adam", "lr": 0.002, "augment": "crop",
                          "deterministic": True, "alignment_every": 0, "init_from": str(folder),
                          "freeze_backbone_epochs": 1, "backbone_lr_scale": 0.5})
    full = Trainer(recipe, tmp_path / "full", log=None).fit()
    part = Trainer(recipe, tmp_path / "part", log=None)
    for x, y in part.begin_epoch():
        part.step(x, y)
    part.end_epoch()
    del part
    lines = []
    resumed = Trainer(recipe, tmp_path / "part", resume=True, log=lines.append)
    assert not any("init_from" in line for line in lines)  # the run's checkpoint holds everything
    assert resumed.fit()["init_from"] == full["init_from"]
    for name in ("checkpoint/model.safetensors", "checkpoint/optimizer.safetensors", "best.safetensors"):
        assert same_tensors(tmp_path / "full" / name, tmp_path / "part" / name) == [], name


def test_fine_tuning_resumes_after_a_kill_bit_identically(tmp_path):
    """Kill a real `biotorch train --init-from` process in its frozen first epoch's aftermath, resume, compare."""
    folder = parent_folder(tmp_path / "parent", "lenet_kp")
    args = ["train", "--model", "lenet_kp", "--data", "synthetic", "--epochs", "3", "--batch-size", "16",
            "--augment", "crop_flip", "--deterministic", "--alignment-every", "2", "--lr", "0.02",
            "--init-from", str(folder), "--freeze-backbone-epochs", "1", "--backbone-lr-scale", "0.3",
            "--no-progress"]
    run = tmp_path / "killed"
    kill_and_resume(args, run, epochs=3)

    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the subprocesses
    reference = tmp_path / "uninterrupted"
    assert cli.main([*args, "--out", str(reference)]) == 0
    for name in ("checkpoint/model.safetensors", "checkpoint/optimizer.safetensors", "best.safetensors"):
        assert same_tensors(run / name, reference / name) == [], name
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]  # noqa: E731
    assert strip(json.loads((run / "history.json").read_text())) == \
        strip(json.loads((reference / "history.json").read_text()))
    metrics = [json.loads((r / "metrics.json").read_text()) for r in (run, reference)]
    assert metrics[0]["init_from"] == metrics[1]["init_from"] and metrics[0]["init_from"]["feedback"] == "kept"
