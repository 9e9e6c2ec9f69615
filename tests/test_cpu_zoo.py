"""The CPU zoo campaign (scripts/cpu_zoo.py): the queue, what counts as done, publishing, divergence, imports.

End-to-end runs are LeNets on the synthetic data (a few hundred images, one or two epochs), each run in its
own worker process as the campaign trains them; cards go to a temporary folder, never the package's.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from biotorch.hub import read_config
from biotorch.publish import build_card_folder
from biotorch.training import Trainer
from biotorch.files import previous_folder
from biotorch.training.checkpoint import RunLock
from conftest import TINY_PNG, load_script, same_tensors

ROOT = Path(__file__).resolve().parent.parent
zoo = load_script("cpu_zoo")
LENET = str(ROOT / "recipes" / "fashion_mnist" / "lenet.yaml")
RESNET20 = str(ROOT / "recipes" / "cifar10_jpeg" / "resnet20.yaml")
TINY = {"device": "cpu", "data": "synthetic", "epochs": 1, "limit_train": 256, "alignment_every": 0}


@pytest.fixture(autouse=True)
def _carry_dir(tmp_path, monkeypatch):
    """Partial runs a campaign carries go to the test's folder, never the work tree's ``campaign/``."""
    monkeypatch.setattr(zoo, "CARRY", tmp_path / "carry")


def write_queue(path: Path, runs: list[dict], defaults: dict | None = None) -> Path:
    path.write_text(yaml.safe_dump({"defaults": {"set": TINY, **(defaults or {})}, "runs": runs}))
    return path


def campaign(tmp_path: Path, queue: Path, capsys, *extra: str, budget: float = 300) -> SimpleNamespace:
    """One campaign in this process (its workers are processes, one thread each), as `scripts/cpu_zoo.py` runs."""
    args = ["--queue", str(queue), "--home", str(tmp_path / "home"), "--cards-dir", str(tmp_path / "cards"),
            "--index", str(tmp_path / "index.json"), "--no-readme", "--robustness-limit", "0", "--poll-s", "0.2",
            "--threads", "1", *extra]
    if not {"--status", "--import", "--rebuild", "--carry"} & set(extra):
        args += ["--budget-s", str(budget)]
    code = zoo.main(args)
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


def test_committed_queue_reads_and_trains_on_the_cpu_fp32_then_resnets_in_bf16():
    jobs = zoo.read_queue(ROOT / "recipes" / "cpu_zoo.yaml")
    first_bf16 = next(i for i, j in enumerate(jobs) if j.recipe.amp == "bf16")
    assert all(j.recipe.device == "cpu" and j.recipe.amp == "none" for j in jobs[:first_bf16])  # (a)-(f): fp32
    later = jobs[first_bf16:]   # (g) on: ResNet-20 in bf16 (issue 44), the LeNets in fp32; one fp32 control
    resnets_later = [j for j in later if j.recipe.model == "resnet20"]
    assert all(j.recipe.amp == "none" for j in later if j.recipe.model != "resnet20")
    controls = [j for j in resnets_later if j.recipe.amp == "none"]
    assert [(j.recipe.rule, j.recipe.seed, j.recipe.epochs, j.publish) for j in controls] == [("bp", 1, 30, False)]
    twin = next(j for j in resnets_later if j.recipe.seed == 1 and j.recipe.amp == "bf16")   # the same run in bf16
    assert zoo.recipe_key(dataclasses.replace(twin.recipe, amp="none")) == zoo.recipe_key(controls[0].recipe)
    pilot, *resnets = [j for j in jobs if j.recipe.model == "resnet20" and j.recipe.data == "cifar10_jpeg"]
    assert not pilot.publish and pilot.recipe.rule == "bp" and pilot.recipe.batch_size == 128
    assert [j.recipe.rule for j in resnets[:8]] == ["dfa", "bp", "kp", "fa", "usf", "frsf", "brsf", "wm"]
    assert len({j.recipe.lr for j in resnets[:8] if j.recipe.rule != "dfa"}) == 1  # one recipe (dfa: its override)
    assert all((j.recipe.optimizer, j.recipe.lr) == ("adam", 1e-3) for j in jobs if j.recipe.rule == "dfa"
               and "resnet20" in j.recipe.model)
    search = [j for j in resnets_later if j.recipe.rule != "bp"]   # (h): 30 epochs each, nothing published
    assert {j.recipe.epochs for j in search} == {30} and not any(j.publish for j in search)
    assert {j.recipe.rule for j in search} == {"fa", "dfa", "wm"}
    assert all(j.retry.lr == pytest.approx(0.5 * j.recipe.lr) for j in jobs)


def test_recipe_hash_ignores_where_a_run_trains_not_what_it_learns():
    base = zoo.load_recipe(LENET, {"rule": "fa", "seed": 0})
    # keys newer than the campaign count only away from their defaults: the runs named before them keep their names
    assert not {"weight_init", "init_from_recipe", "img_size"} & set(zoo.recipe_key(base))
    assert zoo.recipe_hash(zoo.load_recipe(RESNET20, {"rule": "bp", "batch_size": 128, "lr": 0.1, "device": "cpu",
                                                      "channels_last": True, "amp": "bf16", "epochs": 100})) == "14f01da8"
    assert zoo.recipe_hash(zoo.load_recipe(LENET, {"rule": "fa", "weight_init": "xavier"})) != zoo.recipe_hash(base)
    same = zoo.load_recipe(LENET, {"rule": "fa", "seed": 3, "device": "cpu", "cuda_graph": False, "val_every": 2})
    assert zoo.recipe_hash(base) == zoo.recipe_hash(same)
    for change in ({"lr": 0.01}, {"batch_size": 256}, {"amp": "bf16"}, {"rule": "bp"}, {"epochs": 31}):
        assert zoo.recipe_hash(zoo.load_recipe(LENET, {"rule": "fa", **change})) != zoo.recipe_hash(base), change


def test_speed_before_any_measurement_comes_from_the_model_class(tmp_path):
    """A variant of an architecture (lenet_tanh: LeNet with tanh units) gets its class's estimate without an entry
    of its own; a deeper model of a class (resnet56) is estimated slower by its parameter count; a measurement
    replaces the estimate."""
    recipe = {m: zoo.load_recipe(LENET, {"model": m}) for m in ("lenet", "lenet_tanh", "resnet20", "resnet56")}
    estimate = {m: zoo.speed(tmp_path, r, 2) for m, r in recipe.items()}
    assert estimate["lenet_tanh"] == estimate["lenet"] and zoo.robustness_s("lenet_tanh") == zoo.robustness_s("lenet")
    assert estimate["resnet56"] < estimate["resnet20"] / 2 < estimate["lenet"]
    assert zoo.robustness_s("resnet56") > 2 * zoo.robustness_s("resnet20")
    (tmp_path / "speeds.json").write_text(json.dumps({"lenet_tanh.fashion_mnist@2": 1234.0}))
    assert zoo.speed(tmp_path, recipe["lenet_tanh"], 2) == 1234.0
    assert zoo.speed(tmp_path, recipe["lenet"], 2) == estimate["lenet"]


def test_a_model_measured_on_other_data_is_estimated_from_it_by_pixels(tmp_path):
    """ResNet-20 measured on CIFAR-10 gives its Fashion-MNIST estimate (padded to 32x32: the same pixels), not the
    model class's default; at another thread count, or for another model, the measurement says nothing."""
    (tmp_path / "speeds.json").write_text(json.dumps({"resnet20.cifar10_jpeg@2": 280.0}))
    fashion, cifar = (zoo.load_recipe(RESNET20, {"data": "fashion_mnist", "amp": "none"}),
                      zoo.load_recipe(RESNET20, {"amp": "none"}))
    assert zoo.speed(tmp_path, cifar, 2) == zoo.speed(tmp_path, fashion, 2) == 280.0
    # a speed is its precision's: bf16 is not estimated from fp32's measurement, and is kept apart
    bf16 = dataclasses.replace(cifar, amp="bf16")
    assert zoo.speed(tmp_path, bf16, 2) != 280.0 and zoo.speed_key("resnet20", "cifar10_jpeg", 2, "bf16").endswith(":bf16")
    assert zoo.epoch_s(fashion, tmp_path, 2) == pytest.approx(50_000 * 1.1 / 280.0)
    (tmp_path / "images" / "train" / "a").mkdir(parents=True)
    (tmp_path / "images" / "train" / "a" / "0.png").write_bytes(TINY_PNG)  # an empty class is refused
    larger = zoo.load_recipe(RESNET20, {"data": "imagefolder", "img_size": 64, "amp": "none",
                                        "data_dir": str(tmp_path / "images")})
    assert zoo.speed(tmp_path, larger, 2) == pytest.approx(280.0 / 4)
    default = zoo.speed(tmp_path / "nothing measured", fashion, 1)
    assert zoo.speed(tmp_path, fashion, 1) == default != 280.0
    assert zoo.speed(tmp_path, zoo.load_recipe(RESNET20, {"data": "fashion_mnist", "model": "resnet56"}), 2) != 280.0


def test_a_runs_next_epoch_is_the_median_of_its_last_five_else_the_measured_speed(tmp_path):
    """One epoch slowed by a paused worker does not move the estimate; only the last five count; before its first
    epoch a run gets the speed measured so far."""
    (tmp_path / "speeds.json").write_text(json.dumps({"resnet20.cifar10_jpeg@2": 280.0}))
    recipe = zoo.load_recipe(RESNET20, {})
    assert zoo.next_epoch_s([], recipe, tmp_path, 2) == zoo.epoch_s(recipe, tmp_path, 2)
    history = [{"epoch_time_s": s} for s in (900.0, 180.0, 176.0, 600.0, 178.0, 181.0)]
    assert zoo.next_epoch_s(history, recipe, tmp_path, 2) == 180.0
    assert zoo.next_epoch_s(history[:1], recipe, tmp_path, 2) == 900.0
    odd = history + [{"epoch_time_s": None}, {}, "not a row", {"epoch_time_s": "fast"}]  # a damaged carried file
    assert zoo.next_epoch_s(odd, recipe, tmp_path, 2) == 180.0
    # what is left of a partial run goes at its own pace (carried from another machine too), not the measured speed
    run = tmp_path / "run"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoint" / "state.json").write_text(json.dumps({"epoch": 6, "history": history}))
    recipe = zoo.load_recipe(RESNET20, {"epochs": 10})
    assert zoo.seconds_left(recipe, run, tmp_path, 2) == 4 * 180.0 + zoo.START_S
    fresh = 10 * zoo.epoch_s(recipe, tmp_path, 2) + zoo.START_S
    assert zoo.seconds_left(recipe, tmp_path / "new", tmp_path, 2) == fresh
    (run / "checkpoint" / "state.json").write_text(json.dumps({"epoch": 6, "history": "damaged"}))
    assert zoo.seconds_left(recipe, run, tmp_path, 2) == 4 * zoo.epoch_s(recipe, tmp_path, 2) + zoo.START_S


@pytest.mark.parametrize("entry, message", [
    ({"recipe": LENET, "rules": ["fa"], "epochs": 3}, "unknown key(s) epochs"),
    ({"recipe": LENET, "rules": ["fx"]}, "unknown learning rule 'fx'"),
    ({"recipe": LENET, "rules": "fa"}, "`rules` (a list of rules)"),
    ({"recipe": LENET, "rules": ["fa"], "seeds": [-1]}, "`seeds` is a list of non-negative integers"),
    ({"recipe": LENET, "rules": ["fa"], "replace": "sometimes"}, "replace is 'better' or 'always'"),
    ({"recipe": LENET, "rules": ["fa"], "set": {"lr": "fast"}}, "'lr'"),
    (42, "entry 0 is 42, not a mapping"),
    ({"recipe": LENET, "rules": ["fa"], "set": [1, 2]}, "entry 0: `set` is a mapping of recipe keys, got [1, 2]"),
    ({"recipe": LENET, "rules": ["fa"], "retry": 5}, "entry 0: `retry` is a mapping of recipe keys, got 5"),
    ({"recipe": RESNET20, "rules": ["bp", "dfa"], "set": {"lr": 0.1}},  # SGD's lr for dfa's Adam
     "`set` overrides dfa's rule_overrides in " + RESNET20 + " (lr: 0.001 -> 0.1); give dfa an entry of its own"),
])
def test_a_bad_queue_is_one_line_and_exit_2(tmp_path, capsys, entry, message):
    queue = write_queue(tmp_path / "q.yaml", [entry])
    assert zoo.main(["--queue", str(queue), "--home", str(tmp_path / "home"), "--status"]) == 2
    error = capsys.readouterr().err
    assert message in error and len(error.strip().splitlines()) == 1, error


def test_bad_defaults_are_one_line_and_exit_2(tmp_path, capsys):
    queue = tmp_path / "q.yaml"
    queue.write_text(yaml.safe_dump({"defaults": [1], "runs": [{"recipe": LENET, "rules": ["fa"]}]}))
    assert zoo.main(["--queue", str(queue), "--home", str(tmp_path / "home"), "--status"]) == 2
    error = capsys.readouterr().err
    assert "`defaults` is a mapping" in error and str(queue) in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize("name, text", [("speeds.json", "{not json"), ("speeds.json", '{"lenet.synthetic@1": "fast"}'),
                                        ("speeds.json", "[1]"), ("status.json", "[1, 2]")])
def test_a_damaged_record_of_the_campaign_is_one_line_naming_it(tmp_path, capsys, name, text):
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["fa"]}])
    (job,) = zoo.read_queue(queue)
    home = tmp_path / "home"
    path = home / name if name == "speeds.json" else job.folder(home) / name
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert zoo.main(["--queue", str(queue), "--home", str(home), "--cards-dir", str(tmp_path / "cards"),
                     "--status"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"cpu_zoo: error: {path} is damaged") and len(error.splitlines()) == 1, error


def test_campaign_trains_publishes_and_a_second_start_has_nothing_to_do(tmp_path, capsys):
    queue = write_queue(tmp_path / "q.yaml", [
        {"recipe": LENET, "rules": ["fa"], "set": {"batch_size": 64}, "publish": False},   # a pilot
        {"recipe": LENET, "rules": ["fa"], "seeds": [0, 1]},
    ])
    first = campaign(tmp_path, queue, capsys, "--jobs", "2")
    assert first.returncode == 0, first.stdout + first.stderr
    cards, home = tmp_path / "cards", tmp_path / "home"
    assert [p.name for p in cards.iterdir() if p.is_dir()] == ["lenet_fa.synthetic"]
    cfg = read_config(cards / "lenet_fa.synthetic")["pretrained_cfg"]
    assert cfg["metrics"]["seed_list"] == [0, 1] and cfg["recipe"]["batch_size"] == 128
    assert "trained on cpu in fp32" in (cards / "lenet_fa.synthetic" / "README.md").read_text()
    assert [r["name"] for r in json.loads((tmp_path / "index.json").read_text())] == ["lenet_fa.synthetic"]
    # the pilot trained (batch 64) but is no card; every run is done
    status = json.loads((home / "campaign.json").read_text())
    assert [r["state"] for r in status["runs"]] == ["done"] * 3 and status["queue_eta_s"] == 0
    log = (home / "campaign.log").read_text()
    assert log.count("] start ") == 3 and "ETA of the run" in log and "img/s (1 thread)" in log
    assert "lenet.synthetic@1" in (home / "speeds.json").read_text()
    # stateless: the card says it is done, so a new campaign trains nothing
    second = campaign(tmp_path, queue, capsys)
    assert second.returncode == 0 and "] start " not in second.stdout and "0 run(s) left" in second.stdout
    # a card's recipe is what makes its runs done: with another lr the same queue is new work again
    other = write_queue(tmp_path / "q2.yaml", [{"recipe": LENET, "rules": ["fa"], "set": {"lr": 0.02}}])
    assert zoo.main(["--queue", str(other), "--home", str(home), "--cards-dir", str(cards), "--status"]) == 0
    assert " new 0/1 epochs" in capsys.readouterr().out
    # a pilot that is the same run as a published card is done on a machine that never trained it
    same = write_queue(tmp_path / "q3.yaml", [{"recipe": LENET, "rules": ["fa"], "seeds": [1], "publish": False}])
    assert zoo.main(["--queue", str(same), "--home", str(tmp_path / "fresh"), "--cards-dir", str(cards),
                     "--status"]) == 0
    assert capsys.readouterr().out.split()[1] == "done"


def test_a_campaign_whose_data_is_missing_stops_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BIOTORCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BIOTORCH_DATA", raising=False)
    queue = write_queue(tmp_path / "q.yaml", [
        {"recipe": LENET, "rules": ["bp"]},   # synthetic: always there
        {"recipe": LENET, "rules": ["fa"], "set": {"data": "cifar10_jpeg", "data_dir": str(tmp_path / "none")}}])
    result = campaign(tmp_path, queue, capsys)
    assert result.returncode == 2 and result.stdout == "", result.stdout
    error = result.stderr.strip()
    assert error.startswith("cpu_zoo: error: lenet_fa.cifar10_jpeg (seed 0): No cifar10_jpeg data found")
    assert str(tmp_path / "none") in error and "$BIOTORCH_DATA" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "home" / "runs").exists()


def test_with_carry_over_a_run_longer_than_the_budget_starts_last_and_resumes_first(tmp_path):
    home, cards = tmp_path / "home", tmp_path / "cards"
    home.mkdir()
    (home / "speeds.json").write_text(json.dumps({"lenet.synthetic@1": 256 / 1.1}))  # 1.21 s an epoch, 60 s to start
    long, short = zoo.read_queue(write_queue(tmp_path / "q.yaml", [
        {"recipe": LENET, "rules": ["bp"], "set": {"epochs": 100}}, {"recipe": LENET, "rules": ["fa"]}]))
    elsewhere = set()
    pick = lambda budget_s, skip=(): [None if run is None else run[0] for run in  # noqa: E731
                                      zoo.next_run([long, short], home, cards, set(skip), elsewhere, budget_s, 1)]
    assert pick(120) == [short, long]      # the 1-epoch run ends inside 120 s; the 100-epoch one would not
    assert pick(120, {short.folder(home).name}) == [None, long]
    assert pick(63) == [short, None]       # 3 of the long run's epochs and its start do not fit
    (long.folder(home) / "checkpoint").mkdir(parents=True)  # its first epochs trained in an earlier campaign
    (long.folder(home) / "checkpoint" / "state.json").write_text(json.dumps({"epoch": 1, "history": []}))
    assert pick(120) == [long, None]       # a partial run resumes first: it stops at an epoch boundary
    assert pick(62) == [long, None]        # its start and one epoch fit
    assert pick(61) == [None, None]        # they do not: nor does the short run


def train_epochs(recipe, folder: Path, epochs: int) -> None:
    """``epochs`` epochs of a run, then the process ends (a partial run, as a session that stops leaves it)."""
    trainer = Trainer(recipe, folder, resume=True, log=None, progress=False)
    for _ in range(epochs):
        for x, y in trainer.begin_epoch():
            trainer.step(x, y)
        trainer.end_epoch()
    trainer.close()


def test_a_partial_run_carried_through_the_work_tree_resumes_on_another_machine(tmp_path, capsys):
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["fa"], "set": {"epochs": 3}}])
    (job,) = zoo.read_queue(queue)
    carry, one, two = tmp_path / "carry", tmp_path / "home", tmp_path / "two"
    train_epochs(job.recipe, job.folder(one), 1)          # machine one: an epoch, then its session ends
    assert campaign(tmp_path, queue, capsys, "--carry").returncode == 0
    carried = carry / job.folder(one).name
    assert zoo.epochs_done(carried) == 1 and not (carried / ".lock").exists()
    assert {p.name for p in carried.iterdir()} >= {"checkpoint", "best.safetensors", "recipe.yaml", "history.json"}
    train_epochs(job.recipe, job.folder(one), 1)          # a copy further on replaces the carried one, atomically
    assert campaign(tmp_path, queue, capsys, "--carry").returncode == 0
    assert zoo.epochs_done(carried) == 2 and [p.name for p in carry.iterdir()] == [carried.name]
    # machine two: a fresh home; the committed copy is found before anything else
    args = ["--queue", str(queue), "--home", str(two), "--cards-dir", str(tmp_path / "cards")]
    assert zoo.main([*args, "--status"]) == 0
    row = next(line.split() for line in capsys.readouterr().out.splitlines() if line.startswith(carried.name))
    assert row[1:3] == ["partial", "2/3"], row
    assert f"resumes {carried.name} at epoch 2 from {carry}" in (two / "campaign.log").read_text()
    # it ends as the run would have ended on one machine, bit for bit
    train_epochs(job.recipe, job.folder(two), 1)
    train_epochs(job.recipe, tmp_path / "whole", 3)
    train_epochs(job.recipe, job.folder(one), 1)
    for name in ("checkpoint/model.safetensors", "checkpoint/optimizer.safetensors", "best.safetensors"):
        assert same_tensors(job.folder(two) / name, tmp_path / "whole" / name) == [], name
        assert same_tensors(job.folder(two) / name, job.folder(one) / name) == [], name
    # a home further on than the carried copy keeps its own; once the card is published, the copy goes
    assert zoo.main([*args, "--status"]) == 0 and zoo.epochs_done(job.folder(two)) == 3
    Trainer(job.recipe, job.folder(two), resume=True, log=None, progress=False).fit()  # finish: metrics.json
    result = campaign(tmp_path, queue, capsys, "--home", str(two))
    assert result.returncode == 0 and "published" in result.stdout and "] start " not in result.stdout
    assert not carry.exists()
    # a card published before its attacks (they did not fit): its finished run travels, to rebuild the card after
    cards, three = tmp_path / "cards", tmp_path / "three"
    (line,) = zoo.carry_out([job], two, cards, carry)
    assert line.startswith(f"carried {carried.name} (finished) to {carry}")
    assert zoo.carry_in([job], three, carry) == [f"resumes {carried.name} at epoch 3 from {carry}"]
    assert zoo.finished(job.folder(three))
    config = json.loads((cards / job.card / "config.json").read_text())
    config["pretrained_cfg"]["metrics"]["robustness"] = [{"attack": "fgsm"}, {"attack": "square"}]  # attacked
    (cards / job.card / "config.json").write_text(json.dumps(config))
    assert zoo.carry_out([job], three, cards, carry) == [] and not carry.exists()


def test_a_worker_whose_run_cannot_end_in_the_budget_carries_it_after_each_epoch(tmp_path):
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["bp"], "set": {"epochs": 1000},
                                               "publish": False}])
    (job,) = zoo.read_queue(queue)
    home, carry = tmp_path / "home", tmp_path / "carry"
    folder = job.folder(home)
    chance_epochs = 0  # no check for chance: a long warm-up leaves the first epochs at chance on this data
    code = zoo.train_one(job.recipe, folder, home, time.time() + 6, torch.get_num_threads(), chance_epochs, carry)
    assert code == 3 and 1 <= zoo.epochs_done(folder) < 1000      # stopped for the budget at an epoch boundary
    assert zoo.epochs_done(carry / folder.name) == zoo.epochs_done(folder)  # its last epoch is in the work tree
    assert same_tensors(carry / folder.name / "best.safetensors", folder / "best.safetensors") == []
    short = zoo.read_queue(write_queue(tmp_path / "q2.yaml", [{"recipe": LENET, "rules": ["fa"]}]))[0]
    assert zoo.train_one(short.recipe, short.folder(home), home, time.time() + 600, torch.get_num_threads(), 3,
                         carry) == 0
    assert not (carry / short.folder(home).name).exists()         # a run that ends in the budget is not copied
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")      # the copy fails: the run trains on regardless
    before = zoo.epochs_done(folder)
    assert zoo.train_one(job.recipe, folder, home, time.time() + 6, torch.get_num_threads(), chance_epochs,
                         blocked) == 3
    assert zoo.epochs_done(folder) > before and "could not copy it to" in (home / "campaign.log").read_text()


def test_a_diverged_run_travels_as_diverged_with_its_retry_and_is_never_resumed(tmp_path):
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["fa"], "set": {"epochs": 3}}],
                        {"retry": {"lr_scale": 0.5}})
    (job,) = zoo.read_queue(queue)
    home, carry, cards = tmp_path / "home", tmp_path / "carry", tmp_path / "cards"
    first, retry = job.folder(home), job.folder(home, True)
    kept = sorted([first.name + zoo.DIVERGED, retry.name])
    train_epochs(job.recipe, first, 1)
    assert zoo.carry_out([job], home, cards, carry) and zoo.epochs_done(carry / first.name) == 1
    os.replace(first, first.with_name(first.name + zoo.DIVERGED))  # it diverged: kept, as the campaign keeps it
    train_epochs(job.retry, retry, 1)                              # and its retry trained an epoch
    assert len(zoo.carry_out([job], home, cards, carry)) == 2
    assert sorted(p.name for p in carry.iterdir()) == kept          # the copy from before it diverged is gone
    fresh = tmp_path / "fresh"
    assert len(zoo.carry_in([job], fresh, carry)) == 2
    state, recipe, folder = zoo.job_state(job, fresh, cards)
    assert (state, folder.name, zoo.epochs_done(folder), recipe.lr) == ("partial", retry.name, 1, job.retry.lr)
    # a copy cut short by a stopped process: the swap between its renames is undone, the staging folder goes
    os.replace(carry / retry.name, carry / f".{retry.name}.old")
    (carry / f".{retry.name}.new").mkdir()
    assert len(zoo.carry_in([job], tmp_path / "third", carry)) == 2
    assert sorted(p.name for p in carry.iterdir()) == kept


def test_a_run_is_partial_only_with_a_checkpoint_resume_can_read(tmp_path):
    """A first checkpoint cut short (a folder without its state) is no run to resume: the run is new, so the
    campaign budgets it whole; a later swap cut short leaves the previous checkpoint, which resume finds."""
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["bp"], "set": {"epochs": 3}}])
    (job,) = zoo.read_queue(queue)
    home, cards = tmp_path / "home", tmp_path / "cards"
    folder = job.folder(home)
    (folder / "checkpoint").mkdir(parents=True)  # the first save stopped before its state was written
    assert zoo.job_state(job, home, cards)[0] == "new" and zoo.epochs_done(folder) == 0
    previous = previous_folder(folder / "checkpoint")
    previous.mkdir()
    (previous / "state.json").write_text(json.dumps({"epoch": 2, "history": []}))
    assert zoo.job_state(job, home, cards)[0] == "partial" and zoo.epochs_done(folder) == 2


def test_a_run_stopped_for_the_budget_does_not_start_again_in_the_same_campaign(tmp_path, capsys):
    """The campaign and its worker estimate the next epoch apart (the worker adds a margin): a partial run whose
    start and epoch fit the campaign's estimate but not its worker's stops at once (exit 3); the budget only
    shrinks, so the campaign must not start it again and again until the budget is spent."""
    epoch = 2 * (zoo.START_S + 10) / 0.15   # the worker's 15 % margin on one epoch exceeds START_S + 10 s
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["bp"], "set": {"epochs": 2}}])
    (job,) = zoo.read_queue(queue)
    home, folder = tmp_path / "home", job.folder(tmp_path / "home")
    train_epochs(job.recipe, folder, 1)  # a partial run: 1 of its 2 epochs
    state = json.loads((folder / "checkpoint" / "state.json").read_text())
    state["history"][0]["epoch_time_s"] = epoch  # as it took on a busy machine
    (folder / "checkpoint" / "state.json").write_text(json.dumps(state))
    (home / "speeds.json").write_text(json.dumps({"lenet.synthetic@1": 256 * 1.1 / epoch}))
    result = campaign(tmp_path, queue, capsys, budget=epoch + zoo.START_S + 10)
    assert result.returncode == 0, result.stderr
    lines = (home / "campaign.log").read_text().splitlines()
    assert sum(f"start {job.folder(home).name}" in line for line in lines) == 1, lines
    assert any("would pass the budget" in line for line in lines) and "campaign stops" in lines[-2], lines
    assert f"carried {job.folder(home).name} (epoch 1) to {tmp_path / 'carry'}: commit it" in lines[-1]
    assert zoo.epochs_done(tmp_path / "carry" / job.folder(home).name) == 1


def test_a_worker_left_by_an_earlier_campaign_process_holds_one_of_the_jobs(tmp_path, capsys):
    """With --jobs 1, a run still trained by a worker of a killed campaign process is waited for, not joined by a
    second run on the same cores; when that worker finishes, its run is published and the next one starts."""
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["fa"], "seeds": [0, 1]}])
    first, second = zoo.read_queue(queue)
    home = tmp_path / "home"
    folder = first.folder(home)
    assert zoo.train_one(first.recipe, folder, home, time.time() + 600, 1, 3) == 0
    (folder / "metrics.json").rename(tmp_path / "metrics.json")  # its last epoch still running, as it were
    lock = RunLock(folder).acquire()
    started_while_held = []

    def finish():
        time.sleep(3)
        started_while_held.append((second.folder(home) / "recipe.yaml").exists())
        (tmp_path / "metrics.json").rename(folder / "metrics.json")
        lock.release()

    thread = threading.Thread(target=finish)
    thread.start()
    result = campaign(tmp_path, queue, capsys)
    thread.join()
    assert started_while_held == [False], result.stdout
    assert [line.split("] start ")[1].split()[0] for line in result.stdout.splitlines() if "] start " in line] \
        == [second.folder(home).name], result.stdout
    assert result.returncode == 0 and "0 run(s) left" in result.stdout, result.stdout
    cfg = read_config(tmp_path / "cards" / "lenet_fa.synthetic")["pretrained_cfg"]
    assert cfg["metrics"]["seed_list"] == [0, 1]
    # --rebuild where one seed's run is not here (another machine's home) leaves the two-seed card as it is
    shutil.rmtree(second.folder(home))
    rebuilt = campaign(tmp_path, queue, capsys, "--rebuild")
    assert rebuilt.returncode == 0 and "rebuilt" not in rebuilt.stdout, rebuilt.stdout
    assert f"skipped lenet_fa.synthetic: no finished run in {home / 'runs'} for {second.folder(home).name}" \
        in rebuilt.stdout, rebuilt.stdout
    assert read_config(tmp_path / "cards" / "lenet_fa.synthetic")["pretrained_cfg"]["metrics"]["seed_list"] == [0, 1]


def test_no_run_starts_that_cannot_end_inside_the_budget(tmp_path, capsys):
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["bp"], "set": {"epochs": 100}}])
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "speeds.json").write_text(json.dumps({"lenet.synthetic@1": 256 / 1.1}))  # 1 s an epoch
    result = campaign(tmp_path, queue, capsys, budget=120)  # 3 epochs would fit: only --carry-over starts it
    assert result.returncode == 0 and "] start " not in result.stdout and "1 run(s) left" in result.stdout
    assert not (tmp_path / "cards").exists()


def test_a_diverging_run_is_kept_and_retried_once_with_the_documented_change(tmp_path, capsys):
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["bp"], "set": {"lr": 1.0e6},
                                               "retry": {"lr": 0.05}}], defaults={"retry": {"lr_scale": 0.5}})
    result = campaign(tmp_path, queue, capsys)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = sorted(p.name for p in (tmp_path / "home" / "runs").iterdir())
    diverged = [r for r in runs if r.endswith("-diverged")]
    assert len(diverged) == 1 and len(runs) == 2
    log = (tmp_path / "home" / "campaign.log").read_text()
    assert "DIVERGED" in log and "loss became" in log and "retrying once" in log
    cfg = read_config(tmp_path / "cards" / "lenet_bp.synthetic")["pretrained_cfg"]
    assert cfg["recipe"]["lr"] == 0.05  # the retry's recipe, not the diverged one
    assert [r["state"] for r in json.loads((tmp_path / "home" / "campaign.json").read_text())["runs"]] == ["done"]


def test_a_card_of_another_recipe_is_replaced_only_by_a_better_run(tmp_path, make_run, capsys):
    card = tmp_path / "cards" / "lenet_fa.synthetic"
    published = make_run(rule="fa", dataset="synthetic", val_top1=100.0, test_top1=99.0)  # unbeatable
    build_card_folder([published], card)
    before = (card / "model.safetensors").read_bytes()
    better = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["fa"]}])
    result = campaign(tmp_path, better, capsys)
    assert result.returncode == 0 and "kept the published card (val 100.00)" in result.stdout
    assert (card / "model.safetensors").read_bytes() == before
    assert len(list((tmp_path / "home" / "decisions").iterdir())) == 1
    assert "0 run(s) left" in campaign(tmp_path, better, capsys).stdout  # decided: done, nothing trains again
    (decided,) = (tmp_path / "home" / "decisions").iterdir()
    assert (tmp_path / "carry" / "decisions" / decided.name).read_bytes() == decided.read_bytes()  # carried as is
    fresh = campaign(tmp_path, better, capsys, "--home", str(tmp_path / "fresh"))  # another machine knows it too
    assert "0 run(s) left" in fresh.stdout and "] start " not in fresh.stdout
    always = write_queue(tmp_path / "q2.yaml", [{"recipe": LENET, "rules": ["fa"], "replace": "always"}])
    result = campaign(tmp_path, always, capsys)
    assert result.returncode == 0 and "] start " not in result.stdout  # the finished run is published as it is
    assert read_config(card)["pretrained_cfg"]["recipe"]["batch_size"] == 128  # the queue's, not the old card's 64
    assert (card / "model.safetensors").read_bytes() != before


def test_an_entry_whose_card_a_later_entry_took_over_is_done(tmp_path, capsys):
    """A longer schedule later in the queue for the same card, once published, passes the earlier entry over: the
    card no longer holds the earlier recipe, yet the earlier run does not train again, here or elsewhere; the
    card is rebuilt from the later entry's run."""
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["bp"]},
                                              {"recipe": LENET, "rules": ["bp"], "set": {"epochs": 2},
                                               "replace": "always"}])
    first, longer = zoo.read_queue(queue)
    assert first.later == (longer,) and longer.later == ()
    result = campaign(tmp_path, queue, capsys)
    assert result.returncode == 0 and result.stdout.count("] start ") == 2, result.stdout + result.stderr
    card = tmp_path / "cards" / "lenet_bp.synthetic"
    assert read_config(card)["pretrained_cfg"]["recipe"]["epochs"] == 2
    assert result.stdout.count(" published ") == 2 and "kept the published card" not in result.stdout
    assert not (tmp_path / "carry").exists()  # nothing is left to do, so nothing is carried
    again = campaign(tmp_path, queue, capsys, "--home", str(tmp_path / "fresh"))
    assert again.returncode == 0 and "] start " not in again.stdout and "0 run(s) left" in again.stdout
    assert campaign(tmp_path, queue, capsys, "--rebuild").returncode == 0
    assert read_config(card)["pretrained_cfg"]["recipe"]["epochs"] == 2


def test_a_handed_over_run_is_re_measured_on_the_test_set_before_it_joins(tmp_path, capsys):
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["kp"]}])
    trained = tmp_path / "trained"
    Trainer(zoo.read_queue(queue)[0].recipe, trained, log=None, progress=False).fit()  # as another machine did
    handed = tmp_path / "handed" / "lenet_kp.synthetic-seed0"
    shutil.copytree(trained, handed, ignore=shutil.ignore_patterns("checkpoint", ".lock"))
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    lied = json.loads((handed / "metrics.json").read_text())
    lied["test_top1"] += 5.0
    liar = tmp_path / "handed" / "liar"
    shutil.copytree(handed, liar)
    (liar / "metrics.json").write_text(json.dumps(lied))
    args = ["--queue", str(queue), "--home", str(fresh / "home"), "--cards-dir", str(fresh / "cards"),
            "--index", str(fresh / "index.json"), "--no-readme", "--robustness-limit", "0", "--poll-s", "0.1"]
    assert zoo.main([*args, "--import", str(liar)]) == 2
    assert "differs from metrics.json" in capsys.readouterr().err
    assert zoo.main([*args, "--import", str(handed)]) == 0
    assert "re-measured here" in capsys.readouterr().out
    record = json.loads(next((fresh / "home" / "runs").glob("*/imported.json")).read_text())
    claimed = json.loads((handed / "metrics.json").read_text())["test_top1"]
    assert record["test_top1_remeasured"] == pytest.approx(claimed)
    assert zoo.main([*args, "--budget-s", "60"]) == 0  # published as it is: nothing to train
    out = capsys.readouterr().out
    assert "] start " not in out and "published" in out and (fresh / "cards" / "lenet_kp.synthetic").is_dir()


def test_a_carried_run_is_re_measured_here_before_its_card_is_built(tmp_path, capsys):
    """A finished run carried from another machine is input: its numbers are measured again on its bytes, so an
    edited metrics.json, or another seed's weights with their sha256 record copied along, publish nothing."""
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["fa"]}])
    (job,) = zoo.read_queue(queue)
    trained, other = tmp_path / "trained", tmp_path / "other"
    Trainer(job.recipe, trained, log=None, progress=False).fit()
    Trainer(dataclasses.replace(job.recipe, seed=1), other, log=None, progress=False).fit()
    carried = zoo.CARRY / job.folder(tmp_path).name

    def carry(edit) -> SimpleNamespace:
        shutil.rmtree(zoo.CARRY, ignore_errors=True)
        shutil.copytree(trained, carried, ignore=shutil.ignore_patterns(".lock"))
        edit(carried)
        home = tmp_path / f"home{len(list(tmp_path.glob('home*')))}"
        return campaign(tmp_path, queue, capsys, "--home", str(home))

    def lie(folder):
        metrics = json.loads((folder / "metrics.json").read_text())
        (folder / "metrics.json").write_text(json.dumps({**metrics, "test_top1": 97.0}))

    def swap(folder):  # another seed's weights, with the files record that vouches for them
        for name in ("best.safetensors", "config.json"):
            shutil.copy(other / name, folder / name)

    for edit, why in ((lie, "differs from metrics.json's 97.00"), (swap, "not the weights it describes")):
        result = carry(edit)
        assert result.returncode == 0 and why in result.stdout, result.stdout
        assert "published" not in result.stdout and not (tmp_path / "cards" / job.card).exists()
    result = carry(lambda folder: None)
    assert "re-measured here" in result.stdout and "published" in result.stdout
    claimed = json.loads((trained / "metrics.json").read_text())["test_top1"]
    assert read_config(tmp_path / "cards" / job.card)["pretrained_cfg"]["metrics"]["test_top1"] == claimed


def test_a_run_whose_test_set_was_measured_under_autocast_is_published_with_fp32_numbers(tmp_path):
    recipe = zoo.load_recipe(LENET, {**TINY, "amp": "bf16", "rule": "fa"})
    run = tmp_path / "run"
    metrics = Trainer(recipe, run, log=None, progress=False).fit()
    fp32 = metrics["test_top1"]
    older = {k: v for k, v in metrics.items() if k != "test_precision"}   # as runs trained before the fp32 test
    (run / "metrics.json").write_text(json.dumps({**older, "test_top1": fp32 + 0.5, "test_loss": 9.0}))
    measured = zoo.remeasure(run, tmp_path)
    after = json.loads((run / "metrics.json").read_text())
    assert measured["top1"] == pytest.approx(fp32) and after["test_top1"] == pytest.approx(fp32)
    assert after["test_precision"] == "fp32" and after["test_top1_autocast"] == pytest.approx(fp32 + 0.5)
    (run / "metrics.json").write_text(json.dumps({**older, "test_top1": fp32 + 5.0}))  # not a rounding: refused
    with pytest.raises(RuntimeError, match="differs from metrics.json"):
        zoo.remeasure(run, tmp_path)


def test_every_card_is_attacked_once_with_square_and_the_gradient_attacks_for_the_worst_case(tmp_path, monkeypatch):
    queue = write_queue(tmp_path / "q.yaml", [{"recipe": LENET, "rules": ["fa"]}])
    (job,) = zoo.read_queue(queue)
    cards, home = tmp_path / "cards", tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    Trainer(job.recipe, job.folder(home), log=None, progress=False).fit()
    build_card_folder([job.folder(home)], cards / job.card)
    config_path = cards / job.card / "config.json"

    def attacked_with(*attacks):
        config = json.loads(config_path.read_text())
        config["pretrained_cfg"]["metrics"]["robustness"] = [{"attack": a, "eps": 0.05} for a in attacks]
        config_path.write_text(json.dumps(config))
        return zoo.needs_attack(job, home, cards)

    assert attacked_with() and attacked_with("fgsm", "pgd")    # never attacked; attacked before Square
    assert not attacked_with("fgsm", "pgd", "square", "worst")
    started = []
    monkeypatch.setattr(zoo.subprocess, "Popen", lambda command, **kw: started.append(command))
    zoo.attack(job.card, home, cards, 2, 1000)
    (shell,) = started
    first, second = (shlex.split(part) for part in shell[2].split(" && "))
    assert first[3:8] == ["robustness", job.card, "--attack", "fgsm,pgd", "--eps"] and "8/255" in first[8].split(",")
    assert second[3:7] == ["robustness", job.card, "--attack", "square"] and "--eps" not in second
    assert all(c[c.index("--limit") + 1] == "1000" and c[c.index("--write") + 1] == str(cards) for c in (first, second))
