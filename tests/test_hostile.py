"""Hostile and careless input: one clear error (one line, exit 2 from the CLI), nothing lost, nothing trusted.

Every hostile file is built here, in the test; none is committed.
"""
import json
import re
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import biotorch
from biotorch import cli, hub
from biotorch.data import imagefolder_info, load_split
from biotorch.errors import CheckpointError, ConfigError, NonFiniteError, RunLockedError
from biotorch.files import atomic_write, sha256
from biotorch.training import Trainer, load_recipe, make_recipe
from biotorch.training.checkpoint import RunLock
from conftest import make_imagefolder, raw_png

ROOT = Path(__file__).resolve().parent.parent
CARD = ROOT / "model_cards" / "lenet_fa.fashion_mnist"
TINY = {"model": "lenet", "data": "synthetic", "rule": "fa", "epochs": 2, "batch_size": 64, "limit_train": 128,
        "alignment_every": 0, "lr": 0.05, "eval_batch_size": 256}


def one_line_error(capsys, argv) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr; return it."""
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"biotorch {argv[0]}: error: "), err
    return err


def train_argv(out, *extra):
    return ["train", "--model", "lenet_fa", "--data", "synthetic", "--epochs", "1", "--batch-size", "64",
            "--limit-train", "128", "--alignment-every", "0", "--no-progress", "--out", str(out), *extra]


@pytest.fixture
def card_copy(tmp_path):
    folder = tmp_path / "card"
    shutil.copytree(CARD, folder)
    return folder


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


# 1. one process per run folder -----------------------------------------------------------------------------

def test_a_second_trainer_on_the_same_folder_is_refused_with_the_owner(tmp_path, capsys):
    first = Trainer(make_recipe(TINY), tmp_path / "run", log=None, progress=False)
    with pytest.raises(RunLockedError, match=f"in use by pid {os.getpid()}"):
        Trainer(make_recipe(TINY), tmp_path / "run", resume=True, log=None, progress=False)
    assert "in use by pid" in one_line_error(capsys, train_argv(tmp_path / "run"))
    first.fit()
    Trainer(make_recipe(TINY), tmp_path / "run", resume=True, log=None, progress=False).close()  # released


def test_a_killed_owner_never_blocks_a_resume(tmp_path):
    code = f"from biotorch.training.checkpoint import RunLock; lock = RunLock({str(tmp_path)!r}).acquire(); " \
           "print('locked', flush=True); import time; time.sleep(60)"
    owner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert owner.stdout.readline().strip() == "locked"
    with pytest.raises(RunLockedError, match=f"pid {owner.pid}"):
        RunLock(tmp_path).acquire()
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    RunLock(tmp_path).acquire().release()


def test_a_new_run_is_refused_in_a_used_folder_and_a_file_as_folder(tmp_path, capsys):
    Trainer(make_recipe({**TINY, "epochs": 1}), tmp_path / "run", log=None, progress=False).fit()
    assert "already holds a run" in one_line_error(capsys, train_argv(tmp_path / "run"))
    (tmp_path / "file").write_text("x")
    assert "is a file" in one_line_error(capsys, train_argv(tmp_path / "file"))


# 2-3, 8, 11. recipes and flags -------------------------------------------------------------------------------

def test_yaml_alias_bomb_is_refused_at_once(tmp_path, capsys):
    bomb = "model: lenet\ndata: synthetic\na: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb + "rule_options: *i\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="aliases"):
        load_recipe(path)
    assert time.perf_counter() - start < 2
    assert "aliases" in one_line_error(capsys, ["train", "--recipe", str(path), "--out", str(tmp_path / "r")])
    assert "aliases" in one_line_error(capsys, train_argv(tmp_path / "r", "--set", "rule_options=&a {x: *a}"))


@pytest.mark.parametrize("flag", [["--momentum", "nan"], ["--gamma", "nan"], ["--lr", "inf"],
                                  ["--weight-decay", "nan"], ["--warmup-epochs", "inf"], ["--set", "betas=[0.9, nan]"]])
def test_non_finite_hyperparameters_are_refused_before_anything_is_written(flag, tmp_path, capsys):
    assert "finite" in one_line_error(capsys, train_argv(tmp_path / "run", *flag))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["--model", "lenet_fa", "--rule", "dfa"], "names rule 'fa' but --rule is 'dfa'"),
    (["--lr", "0.1", "--set", "lr=0.2"], "lr is 0.1 on the command line but --set lr=0.2"),
    (["--data", "imagefolder"], "needs data_dir"),
])
def test_conflicting_or_incomplete_flags(argv, message, tmp_path, capsys):
    assert message in one_line_error(capsys, train_argv(tmp_path / "run", *argv))


def test_bench_refuses_a_set_that_contradicts_its_rule_as_train_does(tmp_path, capsys):
    error = one_line_error(capsys, ["bench", "fa", "--set", "rule=dfa", "--out", str(tmp_path / "bench")])
    assert "rule is fa on the command line but --set rule=dfa" in error and not (tmp_path / "bench").exists()


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(make_recipe({**TINY, "epochs": 3}), tmp_path / "run", log=None, progress=False)
    for x, y in trainer.begin_epoch():
        trainer.step(x, y)
    trainer.end_epoch()
    best = sha256(tmp_path / "run" / "best.safetensors")
    with torch.no_grad():
        trainer.model.head.bias.fill_(float("nan"))
    for x, y in trainer.begin_epoch():
        trainer.step(x, y)
    with pytest.raises(NonFiniteError, match="epoch 1 is kept"):
        trainer.end_epoch()
    trainer.close()
    assert sha256(tmp_path / "run" / "best.safetensors") == best
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["epoch"] == 1


# 4, 6, 7, 10. weights and configs ----------------------------------------------------------------------------

def test_a_tagged_name_with_checkpoint_loads_the_projects_own_card():
    published = biotorch.create_model("lenet_fa.fashion_mnist", pretrained=True)
    given = biotorch.create_model("lenet_fa.fashion_mnist", checkpoint=CARD)
    via_hub = torch.hub.load(str(ROOT), "lenet_fa", source="local", tag="fashion_mnist", checkpoint=CARD)
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(published.eval()(x), given.eval()(x)) and torch.equal(given(x), via_hub.eval()(x))
    assert published.biotorch_config["seed"] == biotorch.get_pretrained_cfg("lenet_fa.fashion_mnist").metrics["seed"]


def test_a_bit_flipped_card_is_refused_on_every_path(card_copy, capsys):
    flip_a_byte(card_copy / "model.safetensors")
    for load in (lambda: biotorch.create_model("lenet_fa.fashion_mnist", checkpoint=card_copy),
                 lambda: biotorch.from_pretrained(card_copy),
                 lambda: torch.hub.load(str(ROOT), "lenet_fa", source="local", tag="fashion_mnist", checkpoint=card_copy)):
        with pytest.raises(CheckpointError, match="sha256"):
            load()
    assert "sha256" in one_line_error(capsys, ["eval", "--checkpoint", str(card_copy), "--data", "fashion_mnist"])


@pytest.mark.parametrize("content", ["passwd", "truncated", "pickle"])
def test_eval_of_a_file_that_is_not_safetensors_is_one_line(content, tmp_path, capsys):
    path = tmp_path / "weights.safetensors"
    if content == "passwd":
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif content == "truncated":
        path.write_bytes((CARD / "model.safetensors").read_bytes()[:1000])
    else:
        torch.save({"weight": torch.zeros(2)}, path)  # a pickle: never unpickled by biotorch
    err = one_line_error(capsys, ["eval", "lenet_fa", "--checkpoint", str(path), "--data", "fashion_mnist"])
    assert "not a readable safetensors checkpoint" in err


@pytest.mark.parametrize("dtype", [torch.int32, torch.float16, torch.bool])
def test_weights_of_another_dtype_are_refused(dtype, tmp_path):
    state = load_file(str(CARD / "model.safetensors"))
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match="dtype"):
        hub.load_checkpoint(biotorch.create_model("lenet_fa", in_chans=1), tmp_path / "w.safetensors")


def test_non_finite_weights_are_refused_unless_asked_for(tmp_path):
    model = biotorch.create_model("lenet_fa", in_chans=1)
    with torch.no_grad():
        model.fc1.weight[0, 0] = float("nan")
    path = hub.save_weights(model, tmp_path / "w.safetensors")
    target = biotorch.create_model("lenet_fa", in_chans=1)
    with pytest.raises(CheckpointError, match="NaN or infinite values in fc1.weight"):
        hub.load_checkpoint(target, path)
    hub.load_checkpoint(target, path, allow_nonfinite=True)
    assert torch.isnan(target.fc1.weight[0, 0])


@pytest.mark.parametrize("change, message", [
    ({"num_classes": 1e9}, "positive integer"),
    ({"num_classes": 10 ** 9}, "does not hold a lenet_fa with 1000000000 classes"),
    ({"num_classes": "ten"}, "positive integer"),
    ({"rule_options": {"checkpoint": "/etc/passwd"}}, "takes no option checkpoint"),
    ({"rule_options": ["x"]}, "must be an object"),
    ({"arch": None}, "'arch' is None"),
    ({"seed": "0"}, "'seed' must be an integer"),
])
def test_config_json_is_checked_before_anything_is_built(change, message, card_copy):
    config = json.loads((card_copy / "config.json").read_text())
    (card_copy / "config.json").write_text(json.dumps({**config, **change}))
    start = time.perf_counter()
    with pytest.raises(ConfigError if "hold" not in message else CheckpointError, match=message):
        biotorch.from_pretrained(card_copy)
    assert time.perf_counter() - start < 10  # nothing of the size asked for was allocated


def test_a_file_without_arch_metadata_asks_for_a_name(tmp_path, capsys):
    state = load_file(str(CARD / "model.safetensors"))
    save_file(state, str(tmp_path / "w.safetensors"), metadata={"rule": "fa"})
    with pytest.raises(CheckpointError, match="name it"):
        biotorch.pretrained.from_checkpoint(tmp_path / "w.safetensors")
    # a config.json in the folder above the weights is never read
    (tmp_path / "sub").mkdir()
    shutil.move(tmp_path / "w.safetensors", tmp_path / "sub" / "w.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({"arch": "lenet", "rule": "fa", "num_classes": 10}))
    assert "name it" in one_line_error(capsys, ["eval", "--checkpoint", str(tmp_path / "sub" / "w.safetensors"),
                                                "--data", "fashion_mnist"])


def test_registered_names_win_over_folders_and_empty_names_fail(tmp_path, monkeypatch):
    decoy = tmp_path / "lenet_fa.fashion_mnist"
    shutil.copytree(CARD, decoy)
    flip_a_byte(decoy / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    model = biotorch.from_pretrained("lenet_fa.fashion_mnist")  # the sha-checked registry copy
    assert (model.pretrained_cfg["hf_hub_id"], model.pretrained_cfg["tag"]) == ("biotorch/lenet_fa.fashion_mnist",
                                                                              "fashion_mnist")
    with pytest.raises(CheckpointError, match="sha256"):
        biotorch.from_pretrained(Path("lenet_fa.fashion_mnist"))  # the folder, when asked for by path
    with pytest.raises(ConfigError):
        biotorch.from_pretrained("")


def test_push_refuses_symbolic_links(card_copy, make_run, tmp_path):
    (card_copy / "leak.txt").symlink_to("/etc/hostname")
    with pytest.raises(CheckpointError, match="symbolic links"):
        biotorch.push_to_hub(card_copy, "me/x", endpoint="http://127.0.0.1:9")
    run = make_run()
    (run / "history.csv").unlink()
    (run / "history.csv").symlink_to("/etc/hostname")
    with pytest.raises(ConfigError, match="symbolic links"):
        biotorch.push_to_hub(run, "me/x", endpoint="http://127.0.0.1:9")


@pytest.mark.parametrize("umask, mode", [(0o077, 0o600), (0o022, 0o644)])
def test_atomic_write_follows_the_umask(umask, mode, tmp_path):
    previous = os.umask(umask)
    try:
        path = atomic_write(tmp_path / "f", lambda tmp: Path(tmp).write_text("x"))
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == mode


# 5, 6, 9. resume ----------------------------------------------------------------------------------------------

@pytest.fixture
def stopped_run(tmp_path):
    """A run stopped after epoch 1 of 2."""
    trainer = Trainer(make_recipe(TINY), tmp_path / "run", log=None, progress=False)
    for x, y in trainer.begin_epoch():
        trainer.step(x, y)
    trainer.end_epoch()
    trainer.close()
    return tmp_path / "run"


@pytest.mark.parametrize("damage, message", [
    ("flip model", "sha256"), ("truncate optimizer", "sha256"), ("delete state", "incomplete"),
    ("epoch string", "'epoch' must be int"), ("epoch beyond", "outside this recipe"),
    ("no sha", "records no sha256"), ("best_val string", "'best_val' must be float"),
    ("time negative", "'train_time_s' must be float >= 0"), ("images string", "'images_trained' must be int"),
    ("history strings", "'history' must hold one row of numbers"), ("best epoch beyond", "best epoch 5 is not one"),
    ("started_from number", "'started_from' must be dict or null"), ("a list", "must hold a JSON object"),
])
def test_a_damaged_checkpoint_is_refused_on_resume(damage, message, stopped_run, capsys):
    folder = stopped_run / "checkpoint"
    state = json.loads((folder / "state.json").read_text())
    if damage == "flip model":
        flip_a_byte(folder / "model.safetensors")
    elif damage == "truncate optimizer":
        (folder / "optimizer.safetensors").write_bytes((folder / "optimizer.safetensors").read_bytes()[:100])
    elif damage == "delete state":
        (folder / "state.json").unlink()
    elif damage == "a list":
        (folder / "state.json").write_text("[1, 2]")
    else:
        change = {"epoch string": {"epoch": "1"}, "epoch beyond": {"epoch": 7}, "no sha": {"files": {}},
                  "best_val string": {"best_val": "90"}, "time negative": {"train_time_s": -1},
                  "images string": {"images_trained": "many"}, "best epoch beyond": {"best_epoch": 5},
                  "history strings": {"history": [{**state["history"][0], "train_loss": "low"}]},
                  "started_from number": {"started_from": 7}}[damage]
        (folder / "state.json").write_text(json.dumps({**state, **change}))
    files = lambda: sorted((p.name, p.stat().st_mtime_ns) for p in stopped_run.rglob("*") if p.name != ".lock")  # noqa: E731
    before = files()
    assert message in one_line_error(capsys, ["train", "--resume", str(stopped_run), "--no-progress"])
    assert files() == before  # refused before anything was trained or written (the lock file names its holder)


def test_stale_temporary_files_are_removed_when_a_run_starts(stopped_run):
    (stopped_run / ".best.safetensors.abc.tmp").write_bytes(b"half")
    (stopped_run / ".checkpoint.999.tmp").mkdir()
    Trainer(load_recipe(stopped_run / "recipe.yaml", resolved=True), stopped_run, resume=True, log=None).close()
    assert not list(stopped_run.glob(".*.tmp"))


def test_equal_weights_give_equal_bytes(tmp_path):
    model = biotorch.create_model("lenet_dfa", in_chans=1)
    a = hub.save_weights(model, tmp_path / "a.safetensors").read_bytes()
    assert hub.save_weights(model, tmp_path / "b.safetensors").read_bytes() == a


def test_samples_misuse_says_what_is_wrong(capsys):
    err = one_line_error(capsys, ["eval", "lenet_fa.fashion_mnist", "--samples", "--split", "val"])
    assert "sample test images" in err and "not the val split" in err


def test_a_wrong_input_size_is_named():
    lenet = biotorch.create_model("lenet_fa", in_chans=1)
    with pytest.raises(ValueError, match=r"lenet takes images of shape \(N, 1, 32, 32\), got \(2, 1, 28, 28\)"):
        lenet(torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"resnet20 takes images of shape \(N, 3, H, W\), got \(2, 1, 32, 32\)"):
        biotorch.create_model("resnet20_fa")(torch.randn(2, 1, 32, 32))
    assert biotorch.create_model("resnet20_fa")(torch.randn(2, 3, 40, 40)).shape == (2, 10)  # any size: pooled


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"biotorch {biotorch.__version__}"


# issue 22: names, provenance, locks, stale files, YAML ------------------------------------------------------

def _claiming_folder(tmp_path, folder_name: str, **claim) -> Path:
    """A checkpoint folder of fresh lenet_fa weights whose config.json claims to be ``claim`` (a record)."""
    folder = biotorch.save_pretrained(biotorch.create_model("lenet_fa", in_chans=1, seed=5), tmp_path / folder_name)
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"] = {**config.get("pretrained_cfg", {}), **claim}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_tag_never_becomes_a_path_outside_its_folder(tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    folder = _claiming_folder(tmp_path, "evil", tag="x/../../../../" + str(victim))
    config = json.loads((folder / "config.json").read_text())
    config["pretrained_cfg"]["files"] = config["files"]  # a claim that matches its file: trusted, then checked
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="the tag must be letters"):
        biotorch.init_from(biotorch.create_model("lenet_fa", in_chans=1), folder)
    assert (victim / "keep.txt").read_text() == "mine"
    for bad in ("..", "a/b", "", ".hidden", "x" * 200, None):
        with pytest.raises(ValueError):
            biotorch.registry.check_name_part(bad, "a tag")
    assert biotorch.registry.check_name_part("cifar10_jpeg-ft-fa-fashion_mnist", "a tag")


def test_provenance_comes_from_the_verified_bytes(tmp_path):
    official = biotorch.get_pretrained_cfg("lenet_fa.fashion_mnist")
    claim = dict(name=official.name, hub_id=official.hub_id, tag=official.tag, files=official.files)
    folder = _claiming_folder(tmp_path, "swapped", **claim)  # other weights under the official record
    with pytest.raises(CheckpointError, match="its weights are"):
        biotorch.init_from(biotorch.create_model("lenet_fa", in_chans=1), folder)
    plain = _claiming_folder(tmp_path, "plain")  # no claim: its own file, its own name
    taken = biotorch.init_from(biotorch.create_model("lenet_fa", in_chans=1), plain)
    assert taken["name"] is None and taken["hub_id"] is None and taken["tag"] == "plain"
    assert taken["sha256"] == sha256(plain / "model.safetensors")
    published = biotorch.init_from(biotorch.create_model("lenet_fa", in_chans=1), "lenet_fa.fashion_mnist")
    assert published["name"] == official.name and published["sha256"] == hub.recorded_sha256({"files": official.files})


def test_the_run_lock_never_follows_a_link(tmp_path, capsys):
    Trainer(make_recipe({**TINY, "epochs": 1}), tmp_path / "run", log=None, progress=False).fit()
    target = tmp_path / "precious.txt"
    target.write_text("do not truncate")
    (tmp_path / "run" / ".lock").unlink()
    (tmp_path / "run" / ".lock").symlink_to(target)
    err = one_line_error(capsys, ["train", "--resume", str(tmp_path / "run"), "--no-progress"])
    assert "is a link or not a file" in err and target.read_text() == "do not truncate"


def test_out_on_a_folder_that_is_not_a_run_leaves_it_alone(tmp_path, capsys):
    folder = tmp_path / "photos"
    (folder / ".album.tmp").mkdir(parents=True)
    (folder / ".album.tmp" / "a.jpg").write_bytes(b"jpeg")
    (folder / "notes.txt").write_text("mine")
    assert "not a run" in one_line_error(capsys, train_argv(folder))
    assert (folder / ".album.tmp" / "a.jpg").read_bytes() == b"jpeg" and sorted(p.name for p in folder.iterdir()) == \
        [".album.tmp", "notes.txt"]


def test_every_yaml_goes_through_the_one_safe_loader(make_run):
    run = make_run()
    (run / "recipe.yaml").write_text("a: &a [x, x]\nb: [*a, *a]\n")
    with pytest.raises(ConfigError, match="may not use YAML aliases"):
        biotorch.publish.Run(run)


@pytest.mark.parametrize("key, value, message", [
    ("pretrained_cfg", {"label_names": 7}, "'pretrained_cfg.label_names' must be a list of names"),
    ("pretrained_cfg", {"files": "x"}, "'pretrained_cfg.files' must be an object of file records"),
    ("pretrained_cfg", {"mean": "x"}, "'pretrained_cfg.mean' must be a list of numbers"),
    ("pretrained_cfg", [1], "'pretrained_cfg' must be an object"),
    ("input_size", [1, "a", 32], "'input_size' must be [channels, height, width]"),
])
def test_a_folders_config_types_are_named_on_every_path(key, value, message, tmp_path):
    folder = biotorch.save_pretrained(biotorch.create_model("lenet_fa", in_chans=1), tmp_path / "ckpt")
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    paths = [lambda: biotorch.from_pretrained(folder), lambda: biotorch.transforms(folder)]
    if key == "pretrained_cfg":
        paths.append(lambda: biotorch.create_model("lenet_fa", checkpoint=folder))
    for load in paths:
        with pytest.raises(ConfigError, match=re.escape(message)):
            load()


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_chans=0), "in_chans must be an integer in [1, 2**32)"),
    (dict(drop_rate=float("nan")), "drop_rate must be a number in [0, 1)"),
    (dict(num_classes=-1), "num_classes must be an integer in [0, 2**32)"),
    (dict(seed=2 ** 40), "seed must be an integer in [0, 2**32)"),
])
def test_factory_arguments_are_checked_before_building(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        biotorch.create_model("lenet_fa", **kwargs)
    with pytest.raises(ValueError, match=r"mirror_samples must be an integer in \[1, 65536\]"):
        biotorch.create_model("lenet_wm", mirror_samples=10 ** 9)  # refused, not an allocation of 10^9 samples


@pytest.mark.parametrize("flag, message", [
    (["--warmup-epochs", "1e308"], "'warmup_epochs' (1e+308) must be at most 'epochs'"),
    (["--seed", str(10 ** 23)], "'seed' must be in [0, 2**32)"),
    (["--lr", "1e308"], "'lr' is 1e+308: beyond float32's range"),
])
def test_huge_flag_values_are_one_line(flag, message, tmp_path, capsys):
    assert message in one_line_error(capsys, train_argv(tmp_path / "run", *flag))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("change, message", [
    ({"test_top1": float("nan")}, "'test_top1' must be a percentage"),
    ({"val_top1": 250.0}, "'val_top1' must be a percentage"),
    ({"epochs_trained": 0}, "'epochs_trained' must be a positive number of epochs"),
    ({"dataset": "../../etc"}, "'dataset' must be letters"),
])
def test_a_run_with_impossible_metrics_is_not_published(change, message, make_run):
    run = make_run()
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "metrics.json").write_text(json.dumps({**metrics, **change}))  # json writes NaN as a bare NaN
    with pytest.raises(ValueError, match=re.escape(message)):
        biotorch.publish.Run(run)


# issue 47: every number matches its weights --------------------------------------------------------------------

def bench_argv(recipe: Path, out: Path, *extra) -> list:
    return ["bench", "fa", "--recipe", str(recipe), "--attack-images", "0", "--out", str(out), *extra]


def stopped_bench(tmp_path) -> tuple[Path, Path]:
    """A 3-epoch bench recipe and its run stopped after epoch 1 as ``--budget-s`` stops one (trained, then finished:
    the best weights tested)."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump({**TINY, "epochs": 3}))
    trainer = Trainer(load_recipe(recipe, {"rule": "fa", "seed": 0}), tmp_path / "bench", log=None, progress=False)
    for x, y in trainer.begin_epoch():
        trainer.step(x, y)
    trainer.end_epoch()
    assert trainer.finish()["epochs_trained"] == 1
    return recipe, tmp_path / "bench"


def test_a_bench_stopped_by_its_budget_then_run_again_reports_its_final_weights(tmp_path, capsys):
    recipe, run = stopped_bench(tmp_path)
    assert cli.main(bench_argv(recipe, run)) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert metrics["epochs_trained"] == 3 and metrics["best_epoch"] == state["best_epoch"]
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--json"]) == 0  # the test split, measured again on best.safetensors
    assert json.loads(capsys.readouterr().out)["top1"] == pytest.approx(metrics["test_top1"], abs=1e-9)


def test_a_bench_with_another_recipe_in_a_used_folder_is_refused(tmp_path, capsys):
    recipe, run = stopped_bench(tmp_path)
    saved = (run / "recipe.yaml").read_text()
    error = one_line_error(capsys, bench_argv(recipe, run, "--set", "lr=0.001", "--set", "weight_decay=0.01"))
    assert "lr" in error and "weight_decay" in error and str(run) in error
    assert (run / "recipe.yaml").read_text() == saved
    assert json.loads((run / "checkpoint" / "state.json").read_text())["epoch"] == 1


def folder_argv(data: Path, out: Path) -> list:
    return ["train", "--model", "lenet_fa", "--data", "imagefolder", "--data-dir", str(data), "--epochs", "1",
            "--batch-size", "4", "--alignment-every", "0", "--no-progress", "--out", str(out)]


def test_hidden_folders_are_no_class_and_an_empty_class_is_named(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "images", per_class=2, size=32, classes=("ant", "bee"))
    shutil.copytree(data / "train" / "ant", data / "train" / ".ipynb_checkpoints")
    assert imagefolder_info(data).label_names == ("ant", "bee")
    assert load_split("imagefolder", "train", data_dir=data, val_size=0)[1].tolist() == [0, 0, 1, 1]
    (data / "train" / "cat").mkdir()
    error = one_line_error(capsys, folder_argv(data, tmp_path / "run"))
    assert "train/cat: a class folder without images" in error and not (tmp_path / "run").exists()


def test_a_test_class_that_train_lacks_is_refused_before_the_first_epoch(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "images", per_class=2, size=32, classes=("ant", "bee"))
    make_imagefolder(data, per_class=1, size=32, splits=("test",), classes=("cat",))
    error = one_line_error(capsys, folder_argv(data, tmp_path / "run"))
    assert "test" in error and "cat" in error and not (tmp_path / "run").exists()


def test_a_decompression_bomb_is_one_line_and_a_named_pipe_is_not_read(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "images", per_class=2, size=32, classes=("ant", "bee"))
    os.mkfifo(data / "train" / "ant" / "pipe.png")  # reading it would wait for a writer forever

    def hung(*_):
        raise TimeoutError("reading the image folder hangs")
    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(20)
    try:
        assert load_split("imagefolder", "train", data_dir=data, val_size=0)[1].tolist() == [0, 0, 1, 1]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, before)
    (data / "train" / "bee" / "bomb.png").write_bytes(raw_png(40000, 40000, b"", colour=0, depth=8))
    error = one_line_error(capsys, folder_argv(data, tmp_path / "run"))
    assert "bomb.png: cannot decode an image" in error and "decompression bomb" in error


def test_per_class_names_are_printed_escaped(tmp_path, capsys):
    data = make_imagefolder(tmp_path / "images", per_class=4, size=32, classes=("ant", "bee\nrow"))
    recipe = make_recipe({**TINY, "data": "imagefolder", "data_dir": str(data), "epochs": 1, "batch_size": 4,
                          "limit_train": None})
    Trainer(recipe, tmp_path / "run", log=None, progress=False).fit()
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "run"), "--per-class"]) == 0
    table = capsys.readouterr().out.splitlines()[-3:]
    assert [line.split()[0] for line in table] == ["class", "ant", "bee\\nrow"]
