"""Fine-tuning under the GPU speed path (CUDA graph, bf16, channels_last) on one CUDA device: a check, not a test.

For fa/SGD, kp/Adam and dfa/Adam on ResNet-20 (synthetic data, 3 epochs, the backbone frozen in epoch 1):
the graph is captured while the backbone is frozen and the backbone stays bit for bit (BatchNorm statistics
included); after unfreezing the step is captured again and the backbone learns; a run resumed after epoch 1
is compared with the uninterrupted one; a linear probe keeps its backbone under the graph. Prints and writes
``$OUT/report.json`` (about a minute on one GPU; ``DEVICE=cpu`` dry-runs the script without graphs):

    OUT=/tmp/check python scripts/gpu_finetune_check.py
"""
import json
import os
import tempfile
import traceback
from pathlib import Path

import torch
from safetensors.torch import load_file

import biotorch
from biotorch.training import Trainer, make_recipe

out = Path(os.environ.get("OUT", tempfile.mkdtemp()))
tmp = Path(tempfile.mkdtemp())
device = os.environ.get("DEVICE", "cuda")
report = {"device": torch.cuda.get_device_name(0) if device == "cuda" else device, "torch": torch.__version__}


def parent(name):
    torch.manual_seed(0)
    model = biotorch.create_model(name, in_chans=1, num_classes=10)
    return biotorch.save_pretrained(model, tmp / name, pretrained_cfg={"name": f"{name}.p", "tag": "p",
                                                                      "label_names": list("abcdefghij")})


def recipe(rule, optimizer, **values):
    base = dict(model="resnet20", data="synthetic", rule=rule, optimizer=optimizer, epochs=3, batch_size=64,
                lr=0.05 if optimizer == "sgd" else 2e-3, alignment_every=0, device=device, cuda_graph=True,
                amp="bf16", channels_last=True, init_from=str(parent(f"resnet20_{rule}")))
    return make_recipe({**base, **values})


def epoch(trainer):
    for x, y in trainer.begin_epoch():
        trainer.step(x, y)
    if device == "cuda":
        torch.cuda.synchronize()
    return trainer.end_epoch()


for rule, optimizer in (("fa", "sgd"), ("kp", "adam"), ("dfa", "adam")):
    key = f"{rule}-{optimizer}"
    try:
        r = recipe(rule, optimizer, freeze_backbone_epochs=1, backbone_lr_scale=0.5)
        t = Trainer(r, tmp / key, log=None, progress=False)
        start = {k: v.clone() for k, v in t.model.state_dict().items()}
        head = ("fc.",)
        row1 = epoch(t)
        s1 = t.model.state_dict()
        graph1 = t._graph
        frozen_ok = all(torch.equal(s1[k], start[k]) for k in start if not k.startswith(head))
        head_moved = not torch.equal(s1["fc.weight"], start["fc.weight"])
        row2 = epoch(t)
        s2 = t.model.state_dict()
        recaptured = t._graph is not None and t._graph is not graph1
        backbone_moved = not torch.equal(s2["conv1.weight"], start["conv1.weight"]) and \
            not torch.equal(s2["bn1.running_mean"], start["bn1.running_mean"])
        metrics = t.fit()
        # resume after epoch 1 (frozen) in a fresh trainer: must match the uninterrupted run
        p = Trainer(r, tmp / (key + "-part"), log=None, progress=False)
        epoch(p)
        del p
        Trainer(r, tmp / (key + "-part"), resume=True, log=None, progress=False).fit()
        a = load_file(str(tmp / key / "checkpoint" / "model.safetensors"))
        b = load_file(str(tmp / (key + "-part") / "checkpoint" / "model.safetensors"))
        resume_equal = all(torch.equal(a[k], b[k]) for k in a)
        max_diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
        # linear probe under the graph
        q = Trainer(recipe(rule, optimizer, epochs=2, freeze_backbone=True), tmp / (key + "-probe"), log=None,
                    progress=False)
        qs = {k: v.clone() for k, v in q.model.state_dict().items()}
        epoch(q); epoch(q)
        qe = q.model.state_dict()
        probe_frozen = all(torch.equal(qe[k], qs[k]) for k in qs if not k.startswith(head))
        report[key] = dict(graph_captured_epoch1=graph1 is not None, frozen_backbone_bitwise=frozen_ok,
                           head_moved=head_moved, recaptured_after_unfreeze=recaptured,
                           backbone_moved_epoch2=backbone_moved, val=[row1["val_top1"], row2["val_top1"]],
                           test_top1=metrics["test_top1"], resume_bitwise=resume_equal, resume_max_diff=max_diff,
                           probe_backbone_bitwise=probe_frozen, probe_graph=q._graph is not None)
    except Exception:  # report and go on with the next rule
        report[key] = {"error": traceback.format_exc()[-1500:]}
    print(key, json.dumps(report[key]), flush=True)

(out / "report.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
