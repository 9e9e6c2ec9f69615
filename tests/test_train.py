"""The trainer on tiny synthetic data: recipes, records, eval, exact resume after a kill, the zoo script."""
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from biotorch import cli
from conftest import kill_and_resume, load_script, same_tensors
from biotorch.training import Trainer, load_recipe, make_recipe
from biotorch.training.optim import lr_factor
from biotorch.training.runtime import resolve_amp
from biotorch.training.trainer import data_info, seeded_model

ROOT = Path(__file__).resolve().parents[1]
TINY = {"model": "lenet", "data": "synthetic", "epochs": 2, "batch_size": 32, "limit_train": 128,
        "alignment_every": 1, "lr": 0.05}


# -- recipes ------------------------------------------------------------------------------------------

def test_recipe_precedence_rule_overrides_and_resolved_roundtrip(tmp_path, monkeypatch):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**TINY, "model": "lenet_fa", "lr": 0.1, "weight_decay": "1e-3",
                                    "rule_overrides": {"dfa": {"lr": 0.01, "optimizer": "adam"}}}))
    assert load_recipe(path).rule == "fa" and load_recipe(path).lr == 0.1   # rule from the model name
    assert load_recipe(path).weight_decay == 1e-3                           # YAML's '1e-3' string coerced
    dfa = load_recipe(path, {"rule": "dfa"})
    assert (dfa.model, dfa.rule, dfa.model_name) == ("lenet", "dfa", "lenet_dfa")
    assert (dfa.lr, dfa.optimizer, dfa.applied_rule_overrides) == (0.01, "adam", {"lr": 0.01, "optimizer": "adam"})
    assert load_recipe(path, {"rule": "dfa", "lr": "0.3"}).lr == 0.3        # the command line wins
    assert load_recipe(path, {"model": "lenet_kp"}).rule == "kp"
    assert load_recipe(path, {"model": "lenet"}).rule == "fa"              # the file's model named fa
    from biotorch.training import save_recipe

    save_recipe(dfa, tmp_path / "resolved.yaml")
    assert load_recipe(tmp_path / "resolved.yaml", resolved=True) == dfa
    # a data_dir given relative to where the run started is saved absolute: the run finds it from anywhere
    monkeypatch.chdir(tmp_path)
    save_recipe(load_recipe(path, {"data_dir": "data/mine"}), tmp_path / "relative.yaml")
    assert load_recipe(tmp_path / "relative.yaml", resolved=True).data_dir == str(tmp_path.resolve() / "data/mine")


@pytest.mark.parametrize("values, expected", [
    ({"lr": "fast"}, "'lr' must be float"),
    ({"optimzer": "sgd"}, "Did you mean optimizer"),
    ({"schedule": "cosin"}, "Did you mean cosine"),
    ({"augment": "flip"}, "Allowed: none, crop_flip, crop"),
    ({"rule": "dfb"}, "'rule' is 'dfb'. Did you mean dfa"),
    ({"rule": "wm", "rule_options": {"mirror_lr": 2}}, "'rule_options': wm: mirror_lr"),
    ({"rule": "fa", "rule_options": {"mirror_lr": 0.1}}, "'rule_options': rule 'fa' takes no option"),
    ({"epochs": 0}, "'epochs' must be > 0"),
    ({"model": "resnet21"}, "resnet20? Allowed: lenet"),
    ({"data": "fashion-mnist"}, "Did you mean fashion_mnist"),
    ({"schedule": "step"}, "'milestones' is needed"),
    ({"amp": "fp16", "cuda_graph": True}, "amp: bf16 with cuda_graph"),
    ({"weight_init": "glorot"}, "'weight_init'"),
    ({"amp": "fastest"}, "'amp'"),
    ({"rule_overrides": {"dfa": {"seed": 3}}}, "rule_overrides.dfa may not set 'seed'"),
    ({"rule_overrides": {"dfa": {"lrr": 3}}}, "rule_overrides.dfa: unknown recipe key 'lrr'"),
])
def test_bad_values_fail_naming_the_key(values, expected):
    with pytest.raises(ValueError, match=None) as error:
        make_recipe({**TINY, **values})
    assert expected in str(error.value)


def test_schedules():
    steps = 10
    cosine = lr_factor(make_recipe({**TINY, "epochs": 10, "warmup_epochs": 1}), steps)
    assert cosine(0) == pytest.approx(0.1) and cosine(9) == pytest.approx(1.0) and cosine(99) < 1e-3
    step = lr_factor(make_recipe({**TINY, "epochs": 10, "schedule": "step", "milestones": [5, 8]}), steps)
    assert [step(s) for s in (49, 50, 80)] == pytest.approx([1, 0.1, 0.01])
    one = lr_factor(make_recipe({**TINY, "epochs": 10, "schedule": "onecycle"}), steps)
    assert one(0) == pytest.approx(0.04) and one(30) == pytest.approx(1.0) and one(100) == 0


# -- the command line ----------------------------------------------------------------------------------

def tiny_args(out, *extra):
    return ["train", "--model", "lenet_fa", "--data", "synthetic", "--epochs", "2", "--batch-size", "32",
            "--limit-train", "128", "--alignment-every", "1", "--lr", "0.05", "--no-progress",
            "--out", str(out), *extra]


def test_bad_value_is_rejected_before_anything_is_written(tmp_path, capsys):
    assert cli.main(tiny_args(tmp_path / "run", "--lr", "-1")) == 2
    assert "'lr' must be > 0" in capsys.readouterr().err
    assert cli.main(tiny_args(tmp_path / "run", "--set", "betas=[0.9]")) == 2
    assert "'betas'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_train_writes_records_and_eval_reads_them(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(tiny_args(run, "--set", "label_smoothing=0.1")) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("model", "arch", "rule", "dataset", "seed", "epochs", "best_epoch", "val_top1", "test_top1",
                "test_top5", "train_time_s", "images_per_s", "params_forward", "params_feedback", "recipe"):
        assert key in metrics, key
    assert (metrics["model"], metrics["rule"], metrics["epochs"]) == ("lenet_fa", "fa", 2)
    assert metrics["params_feedback"] > 0 and metrics["recipe"]["label_smoothing"] == 0.1
    history = json.loads((run / "history.json").read_text())
    assert [r["epoch"] for r in history] == [1, 2]
    assert (run / "history.csv").read_text().splitlines()[0] == \
        "epoch,train_loss,train_top1,val_loss,val_top1,lr,epoch_time_s"
    best = max(history, key=lambda r: r["val_top1"])
    assert metrics["best_epoch"] == best["epoch"] and metrics["val_top1"] == best["val_top1"]
    records = json.loads((run / "alignment.json").read_text())
    assert [r["epoch"] for r in records] == [1, 2]
    layer = records[-1]["layers"]["conv1"]
    assert 0 <= layer["angle"] <= 180 and -1 <= layer["gradient_cosine"] <= 1 and layer["rule"] == "fa"
    for name in ("curves.png", "alignment.png", "recipe.yaml", "config.json", "checkpoint/state.json"):
        assert (run / name).is_file(), name
    with safe_open(str(run / "best.safetensors"), "pt") as f:
        assert {k: f.metadata()[k] for k in ("arch", "rule")} == {"arch": "lenet", "rule": "fa"}
        assert any(k.endswith("feedback_seed") for k in f.keys()) and "feedback_fingerprint" in f.metadata()
        assert not any(k.endswith("feedback_weight") for k in f.keys())  # fa's B is re-derived, not stored
    assert load_recipe(run / "recipe.yaml", resolved=True).to_dict() == metrics["recipe"]
    capsys.readouterr()

    assert cli.main(["eval", "--checkpoint", str(run), "--data", "synthetic", "--json", "--per-class"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "lenet_fa" and result["top1"] == pytest.approx(metrics["test_top1"])
    assert sum(c["images"] for c in result["per_class"]) == result["images"] == 512
    assert cli.main(["eval", "lenet_fa", "--checkpoint", str(run / "best.safetensors"), "--data", "synthetic",
                     "--per-class", "--exact-gradients"]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {metrics['test_top1']:.2f}%" in out and "class_9" in out

    assert cli.main(tiny_args(run)) == 2                                   # never overwrite a run
    assert "--resume" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(run), "--lr", "0.1"]) == 2  # resume keeps its recipe
    assert "drop lr" in capsys.readouterr().err
    assert cli.main(["train", "--resume", str(run), "--no-progress"]) == 0  # finished: re-plots only
    assert json.loads((run / "metrics.json").read_text()) == metrics


# -- exact resume ------------------------------------------------------------------------------------

def test_resume_after_kill_reaches_bitwise_the_same_weights(tmp_path):
    """Kill a real `biotorch train` process after its first checkpoint, resume it, compare."""
    args = ["train", "--model", "lenet", "--rule", "brsf", "--data", "synthetic", "--epochs", "4",
            "--batch-size", "16", "--augment", "crop_flip", "--deterministic", "--alignment-every", "2",
            "--optimizer", "adamw", "--lr", "0.002", "--warmup-epochs", "1", "--no-progress"]
    run = tmp_path / "killed"
    kill_and_resume(args, run, epochs=4)

    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the subprocesses
    assert cli.main([*args, "--out", str(tmp_path / "uninterrupted")]) == 0
    reference = tmp_path / "uninterrupted"
    for name in ("checkpoint/model.safetensors", "checkpoint/optimizer.safetensors", "best.safetensors"):
        assert same_tensors(run / name, reference / name) == [], name
    strip = lambda rows: [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]  # noqa: E731
    assert strip(json.loads((run / "history.json").read_text())) == \
        strip(json.loads((reference / "history.json").read_text()))
    assert json.loads((run / "alignment.json").read_text()) == \
        json.loads((reference / "alignment.json").read_text())


@pytest.mark.parametrize("rule, optimizer", [("dfa", "sgd"), ("wm", "sgd"), ("kp", "adam"), ("frsf", "sgd")])
def test_resume_in_process_is_exact_for_stateful_rules(tmp_path, rule, optimizer):
    recipe = make_recipe({**TINY, "epochs": 3, "rule": rule, "optimizer": optimizer, "deterministic": True,
                          "augment": "crop", "alignment_every": 0,
                          "lr": 0.05 if optimizer == "sgd" else 0.002})
    Trainer(recipe, tmp_path / "full", log=None).fit()
    part = Trainer(recipe, tmp_path / "part", log=None)
    for x, y in part.begin_epoch():
        part.step(x, y)
    part.end_epoch()
    del part
    Trainer(recipe, tmp_path / "part", resume=True, log=None).fit()
    for name in ("checkpoint/model.safetensors", "checkpoint/optimizer.safetensors"):
        assert same_tensors(tmp_path / "full" / name, tmp_path / "part" / name) == [], name


# -- several runs in one process -------------------------------------------------------------------------

def test_train_zoo_trains_runs_together_and_resumes(tmp_path, capsys):
    zoo = load_script("train_zoo")
    args = ["--recipe", str(ROOT / "recipes" / "fashion_mnist" / "lenet.yaml"), "--rules", "bp,dfa",
            "--data", "synthetic", "--epochs", "1", "--limit-train", "64", "--device", "cpu",
            "--set", "alignment_every=0", "--out", str(tmp_path)]
    assert zoo.main(args) == 0
    for rule, optimizer in (("bp", "sgd"), ("dfa", "adam")):   # the recipe's rule_overrides reached dfa
        metrics = json.loads((tmp_path / f"lenet_{rule}.synthetic-seed0" / "metrics.json").read_text())
        assert (metrics["rule"], metrics["recipe"]["optimizer"], metrics["epochs"]) == (rule, optimizer, 1)
        assert math.isfinite(metrics["test_top1"])
    summary = json.loads((tmp_path / "zoo.json").read_text())
    assert [r["run"] for r in summary["runs"]] == ["lenet_bp.synthetic-seed0", "lenet_dfa.synthetic-seed0"]
    capsys.readouterr()
    assert zoo.main(args) == 0                       # finished runs are reported, not retrained
    assert "epoch 1/1" not in capsys.readouterr().out


@pytest.mark.parametrize("rule", ["dfa", "wm", "kp"])
def test_bf16_autocast_and_channels_last_run_on_cpu(tmp_path, rule):
    recipe = make_recipe({**TINY, "epochs": 1, "limit_train": 64, "rule": rule, "amp": "bf16",
                          "channels_last": True, "device": "cpu"})
    metrics = Trainer(recipe, tmp_path, log=None).fit()
    assert math.isfinite(metrics["test_top1"])


def test_weight_init_xavier_draws_every_conv_and_linear_weight_glorot_uniform_from_the_seed():
    recipe = make_recipe({**TINY, "rule": "fa", "weight_init": "xavier", "device": "cpu"})
    model = seeded_model(recipe, data_info(recipe), torch.device("cpu"))
    default = seeded_model(make_recipe({**TINY, "rule": "fa", "device": "cpu"}), data_info(recipe), torch.device("cpu"))
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(layers) == 5  # LeNet: conv1, conv2, fc1, fc2, the head
    for layer in layers:
        fan_out, fan_in = layer.weight.shape[0], layer.weight[0].numel()
        fan_out *= layer.weight[0, 0].numel()  # a conv's receptive field counts in both fans (torch's convention)
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound and layer.weight.abs().max() > 0.9 * bound
    assert not torch.equal(layers[0].weight, next(m for m in default.modules() if isinstance(m, torch.nn.Conv2d)).weight)
    again = seeded_model(recipe, data_info(recipe), torch.device("cpu"))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


@pytest.mark.parametrize("units, expected", [(("_is_amx_tile_supported",), "bf16"),
                                             (("_is_avx512_bf16_supported",), "bf16"), ((), "none")])
def test_amp_auto_is_bf16_where_the_cpu_has_bf16_units(monkeypatch, units, expected):
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.setattr(torch.cpu, probe, lambda probe=probe: probe in units, raising=False)
    amp, why = resolve_amp("auto", torch.device("cpu"))
    assert amp == expected and ("fp32" in why) == (expected == "none")
    assert resolve_amp("none", torch.device("cpu"))[0] == "none"   # an explicit precision is kept


def test_a_bf16_run_reports_its_test_set_in_fp32_as_eval_measures_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    recipe = make_recipe({**TINY, "epochs": 1, "limit_train": 64, "amp": "auto", "device": "cpu"})
    lines = []
    metrics = Trainer(recipe, tmp_path / "run", log=lines.append).fit()
    assert metrics["amp"] == "bf16" and metrics["test_precision"] == "fp32"
    assert any("precision: bf16 autocast (amp auto: this CPU has" in line for line in lines)
    capsys.readouterr()
    assert cli.main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", "synthetic", "--json"]) == 0
    measured = json.loads(capsys.readouterr().out)
    assert measured["top1"] == pytest.approx(metrics["test_top1"], abs=1e-9)
    assert measured["loss"] == pytest.approx(metrics["test_loss"], abs=1e-6)   # bf16 logits would differ here


def test_amp_auto_resumes_in_the_precision_it_started_in(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    recipe = make_recipe({**TINY, "epochs": 2, "limit_train": 64, "amp": "auto", "device": "cpu",
                          "alignment_every": 0})
    part = Trainer(recipe, tmp_path, log=None)
    for x, y in part.begin_epoch():
        part.step(x, y)
    part.end_epoch()
    part.close()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)  # another machine
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    lines = []
    metrics = Trainer(recipe, tmp_path, resume=True, log=lines.append).fit()
    assert metrics["amp"] == "bf16"
    assert any("as resolved where the run started" in line for line in lines)


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "recipes").glob("**/*.yaml")
                                        if p.name not in ("zoo.yaml", "cpu_zoo.yaml")),  # queues, not recipes
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_committed_recipes_validate_for_every_rule(path):
    import biotorch

    for rule in biotorch.RULES:
        recipe = load_recipe(path, {"rule": rule})
        assert recipe.rule == rule and recipe.epochs > 1


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "usf", "brsf", "frsf", "wm", "kp"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_an_epoch_end_leaves_every_tensor_of_the_step_where_it_was(tmp_path, rule, channels_last):
    """A captured CUDA graph replays on fixed addresses: validation, the alignment probe (which reloads the
    state and re-derives feedback), checkpointing and a second epoch must update tensors in place. dfa once
    redrew B as a new tensor there, and the H200 replay hit freed memory (illegal memory access)."""
    from biotorch.training.trainer import graph_memory

    recipe = make_recipe({**TINY, "epochs": 2, "limit_train": 64, "rule": rule, "device": "cpu",
                          "channels_last": channels_last, "alignment_every": 1, "optimizer": "adam"})
    trainer = Trainer(recipe, tmp_path, log=None)
    optimizer = trainer.optimizer  # as in a captured step, gradients are kept (zeroed in place), not dropped
    optimizer.zero_grad = lambda set_to_none=True: type(optimizer).zero_grad(optimizer, set_to_none=False)
    batches = trainer.begin_epoch()
    for _ in range(2):
        trainer.step(*next(batches))
    before = graph_memory(trainer.model, trainer.optimizer)
    assert len(before) > 2 * len(list(trainer.model.parameters()))  # grads and optimizer state counted
    trainer.end_epoch()
    assert trainer.alignment_records  # the probe ran
    x, y = next(iter(trainer.begin_epoch()))
    trainer.step(x, y)
    assert graph_memory(trainer.model, trainer.optimizer) == before


# -- progress --------------------------------------------------------------------------------------------


def test_progress_within_an_epoch_a_bar_on_a_terminal_lines_elsewhere_and_the_epochs_mean_lr(tmp_path, monkeypatch):
    import io
    import sys

    recipe = make_recipe({**TINY, "epochs": 2, "warmup_epochs": 1, "alignment_every": 0, "device": "cpu"})
    lines = []
    trainer = Trainer(recipe, tmp_path / "pipe", log=lines.append, progress_every_s=0)  # stderr is no terminal here
    trainer.fit()
    steps = len(trainer.train_loader)
    within = [line for line in lines if " step " in line]
    assert len(within) == 2 * (steps - 1) and within[0].startswith("[lenet_bp] epoch 1/2  step 1/4  "), lines
    factor = lr_factor(recipe, steps)
    for epoch, row in enumerate(json.loads((tmp_path / "pipe" / "history.json").read_text())):
        mean = recipe.lr * sum(factor(s) for s in range(epoch * steps, (epoch + 1) * steps)) / steps
        assert row["lr"] == pytest.approx(mean), row  # warm-up's epoch: not its first step's 0.05 / 4
        assert f"lr {mean:.4g}  " in next(line for line in lines if line.startswith(f"[lenet_bp] epoch {epoch + 1}/2  train"))

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    lines.clear()
    Trainer(recipe, tmp_path / "terminal", log=lines.append, progress_every_s=0).fit()
    assert "lenet_bp epoch 1/2" in sys.stderr.getvalue() and f"/{steps}" in sys.stderr.getvalue()  # tqdm's bar
    assert not any(" step " in line for line in lines)
