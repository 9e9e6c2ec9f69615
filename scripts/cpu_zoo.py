"""The zoo campaign on the CPU: train the queue (``recipes/cpu_zoo.yaml``) in the background, publish each card
the moment its runs end, attack it, and resume after any interruption.

Stateless: a run is done when its card (``model_cards/<arch>_<rule>.<data>``) is published with the run's recipe
and seed; an entry with ``publish: false`` (a pilot) is done when its run has finished. Runs live outside the
work tree (``--home``, default ``~/.cache/biotorch/campaign``), one folder per (recipe, seed) named after a hash
of the recipe, so a fresh checkout on the same machine resumes them; ``<home>/campaign.json`` says what is in
flight (epoch, images/s, ETA) and what is left; ``<home>/campaign.log`` has one line per epoch.

* A run longer than one session must also survive a move to another machine: a run not done (partial, finished
  but unpublished, diverged with its retry) is copied (checkpoint, best weights, history: ~4.5 MB for a
  ResNet-20) to ``--carry-dir`` (default ``campaign/`` in the work tree), to be committed: after each epoch by a
  worker whose run cannot end inside the budget, and when the campaign stops (``--carry`` copies now), as is a
  finished run whose card still waits for its attacks (the card is rebuilt from it after them). A campaign (or
  ``--status``) first copies into its home what is further on there; a copy goes once its card is published and
  attacked.

* Only a run that can end inside ``--budget-s`` starts (its length estimated from the speed measured so far);
  a partial run resumes where its last epoch ended and stops at an epoch boundary before the budget ends. With
  ``--carry-over``, when nothing else is left to do (no such run, no card to attack), the first new run that cannot
  end starts anyway if ``MIN_EPOCHS`` of its epochs fit; it resumes in the next campaign: a run longer than any one
  budget ends too.
* A run whose loss becomes non-finite, or that is still at chance after ``--chance-epochs``, is stopped, kept
  as ``<folder>-diverged`` (its curve), and retried once with the entry's ``retry`` keys (lr_scale 0.5).
* A card trained with another recipe is replaced only when the new run validates better; otherwise the
  decision is written to ``<home>/decisions/`` (and carried with the runs) and the run counts as done. An entry
  whose card a later entry of the queue has published, or kept, is done too: the longer schedule took over.
* ``--jobs N`` trains N runs at once, each in its own process with ``cpus // N`` threads.
* Data is found as ``biotorch train`` finds it (``$BIOTORCH_DATA/<data>``, ``~/.cache/biotorch/data/<data>``);
  a campaign whose runs cannot find theirs stops before the first run starts (one line, exit 2).

Example::

    $ nohup python scripts/cpu_zoo.py --budget-s 9000 --carry-over > /tmp/cpu_zoo.out 2>&1 &
    $ python scripts/cpu_zoo.py --status                  # the queue: done, partial, next; ETA
    $ python scripts/cpu_zoo.py --import ../shared/zoo-runs/resnet20_bp.cifar10_jpeg-seed0   # re-evaluated first
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

from biotorch import cli
from biotorch.data import DATASETS, load_split
from biotorch.errors import ConfigError, NonFiniteError, RunLockedError
from biotorch.files import LOCK, FolderLock, load_yaml, replace_folder, restore_folder, write_bytes
from biotorch.models import ARCHITECTURES
from biotorch.publish import MIRROR, PRETRAINED_INDEX, REPO_ROOT, Run, build_card_folder, build_index, \
    update_readme_table
from biotorch.rules import make_rule
from biotorch.training.recipe import IMAGE_KEYS, Recipe, load_recipe, make_recipe
from biotorch.training.checkpoint import RunLock, find_checkpoint
from biotorch.training.records import write_json
from biotorch.training.trainer import Trainer, data_info

HOME = Path(os.environ.get("BIOTORCH_CAMPAIGN", "~/.cache/biotorch/campaign")).expanduser()
# runs carried to the next machine through the work tree (committed): this script's own, in whichever clone it runs
CARRY = Path(__file__).resolve().parent.parent / "campaign"
# Recipe keys that say where or how fast a run trains, not what it learns: two recipes differing only here
# are the same run.
NOT_TRAINING = ("device", "data_dir", "download", "cuda_graph", "compile", "eval_batch_size", "seed",
                "alignment_every", "val_every", "rule_overrides")  # the overrides applied are compared
# recipe keys newer than the campaign, at their defaults: a run named before them keeps its name (never break a resume)
LATER_KEYS = {**dict.fromkeys(IMAGE_KEYS), "weight_init": "default", "init_from_recipe": {}}
ENTRY_KEYS = {"recipe", "rules", "seeds", "set", "publish", "replace", "retry"}
# Training images/s of one process by threads, before anything is measured here, for each model class at the
# architecture named (scripts/bench_train.py on the quiet 2-core AMD EPYC machine of 2026-11-30, batch 128: resnet20
# with channels_last 233 with 2 threads, 140 with 1; lenet 5,201 and 3,695), less what the trainer's augmentation and
# records cost. Another architecture of the class is scaled by its parameter count (resnet56: the same blocks, 3x as
# many), so a variant (lenet_tanh) needs no entry of its own.
DEFAULT_SPEED = {"CifarResNet": ("resnet20", {1: 130.0, 2: 200.0}), "LeNet": ("lenet", {1: 3000.0, 2: 4300.0})}
# Seconds to attack a card on 1,000 test images with 2 threads (measured 2026-11-30: resnet20 bp 285 s, dfa 404 s;
# a LeNet card ~20 s), scaled the same way: a card is attacked only when this still fits in the budget.
# With Square (5,000 queries) and the gradient attacks at 8/255 as well (issue 45): ~25 min more for a ResNet-20
# card whose images survive (a bp card; estimated from 1.9 s an image fooled by Square at 8/255 on a dfa card).
ROBUSTNESS_S = {"CifarResNet": ("resnet20", 1950.0), "LeNet": ("lenet", 180.0)}
# What every card is attacked with, in turn: FGSM and PGD on the gradient sources at the cards' radii and 8/255 (with
# their per-image outcomes, so the worst case at 8/255 and 0.05 counts them), then Square, queries only, at its radii.
ATTACK_PLAN = (("fgsm,pgd", "0.01,0.02,8/255,0.05,0.1"), ("square", None))
DIVERGED = "-diverged"
DECISIONS = "decisions"  # a card kept over a run of another recipe: in the home, and carried with the runs
# A run that cannot end inside a campaign's budget starts, when nothing else is left, only if this many epochs fit.
MIN_EPOCHS = 3
START_S = 60.0  # seconds a worker takes to start (imports, data) before its first epoch


def log(line: str, home: Optional[Path] = None) -> None:
    text = f"[cpu_zoo {time.strftime('%H:%M:%S')}] {line}"
    print(text, flush=True)
    if home is not None:
        with open(home / "campaign.log", "a") as f:
            f.write(text + "\n")


# ---------------------------------------------------------------------------------------------------------
# the queue


def recipe_key(recipe: Recipe) -> dict:
    """What decides a run's numbers. Keys added after the campaign began (``LATER_KEYS``) count only when they are
    not at their default, so the runs named before them keep their folders."""
    return {k: v for k, v in recipe.to_dict().items()
            if k not in NOT_TRAINING and not (k in LATER_KEYS and v == LATER_KEYS[k])}


def recipe_hash(recipe: Recipe) -> str:
    return hashlib.sha256(json.dumps(recipe_key(recipe), sort_keys=True).encode()).hexdigest()[:8]


@dataclasses.dataclass
class Job:
    recipe: Recipe
    publish: bool
    replace: str            # better | always
    retry: Optional[Recipe]  # the one retry after a divergence
    index: int              # its entry in the queue
    # the queue's later entries that publish the same card: one of them done, this one is passed over
    later: tuple = dataclasses.field(default=(), repr=False, compare=False)

    @property
    def card(self) -> str:
        return f"{self.recipe.model_name}.{self.recipe.data}"

    @property
    def arch(self) -> str:
        return self.recipe.model

    def folder(self, home: Path, retried: bool = False) -> Path:
        recipe = self.retry if retried else self.recipe
        return home / "runs" / f"{self.card}-seed{recipe.seed}-{recipe_hash(recipe)}"


def _retry_recipe(path: str, overrides: dict, retry: dict) -> Recipe:
    base = load_recipe(path, overrides)
    extra = {k: v for k, v in retry.items() if k != "lr_scale"}
    if "lr_scale" in retry:
        extra["lr"] = extra.get("lr", base.lr) * float(retry["lr_scale"])
    return load_recipe(path, {**overrides, **extra})


def read_queue(path) -> list[Job]:
    """Every run of the queue file, in order; every recipe checked before anything starts."""
    data = load_yaml(Path(path).read_text(), str(path)) or {}
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path}: a queue holds `runs:`, a list of {{recipe, rules, seeds, set, ...}}")
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, dict) or not isinstance(defaults.get("set") or {}, dict) or \
            not isinstance(defaults.get("retry") or {}, dict):
        raise ValueError(f"{path}: `defaults` is a mapping of `set` and `retry` (each a mapping of recipe keys), "
                         f"got {defaults!r}")
    jobs = []
    for index, item in enumerate(data["runs"]):
        if not isinstance(item, dict):
            raise ValueError(f"{path}: entry {index} is {item!r}, not a mapping of {{recipe, rules, ...}}")
        for key in ("set", "retry"):
            if not isinstance(item.get(key) or {}, dict):
                raise ValueError(f"{path}: entry {index}: `{key}` is a mapping of recipe keys, got {item[key]!r}")
        unknown = set(item) - ENTRY_KEYS
        if unknown:
            raise ValueError(f"{path}: entry {index}: unknown key(s) {', '.join(sorted(unknown))}; "
                             f"allowed: {', '.join(sorted(ENTRY_KEYS))}")
        if item.get("replace", "better") not in ("better", "always"):
            raise ValueError(f"{path}: entry {index}: replace is 'better' or 'always', got {item['replace']!r}")
        where = f"{path}: entry {index}"
        if not isinstance(item.get("recipe"), str) or not isinstance(item.get("rules"), list) or not item["rules"]:
            raise ValueError(f"{where}: needs `recipe` (a recipe file) and `rules` (a list of rules)")
        if not all(isinstance(seed, int) and seed >= 0 for seed in item.get("seeds", [0])):
            raise ValueError(f"{where}: `seeds` is a list of non-negative integers, got {item.get('seeds')!r}")
        retry = item["retry"] if "retry" in item else defaults.get("retry")  # an entry's retry replaces the default
        for rule in item["rules"]:
            make_rule(rule)  # an unknown rule fails here, with the known ones
            for seed in item.get("seeds", [0]):
                overrides = {**(defaults.get("set") or {}), **(item.get("set") or {}), "rule": rule, "seed": seed}
                recipe = load_recipe(item["recipe"], overrides)
                undone = {k: v for k, v in recipe.applied_rule_overrides.items() if getattr(recipe, k) != v}
                if undone:  # a `set` meant for the other rules would train this one with another optimizer's lr
                    raise ValueError(f"{where}: `set` overrides {rule}'s rule_overrides in {item['recipe']} ("
                                     + ", ".join(f"{k}: {v!r} -> {getattr(recipe, k)!r}" for k, v in undone.items())
                                     + f"); give {rule} an entry of its own")
                jobs.append(Job(recipe, bool(item.get("publish", True)),
                                item.get("replace", "better"),
                                _retry_recipe(item["recipe"], overrides, retry) if retry else None, index))
    for job in jobs:
        job.later = tuple(j for j in jobs if j.card == job.card and j.index > job.index and j.publish)
    return jobs


# ---------------------------------------------------------------------------------------------------------
# what is done


def card_record(cards_dir: Path, card: str) -> Optional[dict]:
    path = cards_dir / card / "config.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get("pretrained_cfg") or None


def published_with(job: Job, recipe: Recipe, cards_dir: Path) -> bool:
    cfg = card_record(cards_dir, job.card)
    if cfg is None:
        return False
    seeds = cfg["metrics"].get("seed_list") or [cfg["metrics"].get("seed")]
    try:
        card_recipe = load_recipe_dict(cfg["recipe"])
    except Exception:  # a card of an older recipe format is not this recipe
        return False
    return recipe_key(card_recipe) == recipe_key(recipe) and recipe.seed in seeds


def load_recipe_dict(values: dict) -> Recipe:
    """A recipe as a run saved it (its rule_overrides already applied)."""
    return make_recipe(values, resolved=True)


def decision_path(home: Path, job: Job, recipe: Recipe) -> Path:
    return home / DECISIONS / f"{job.card}-seed{recipe.seed}-{recipe_hash(recipe)}.json"


def in_use(folder: Path) -> bool:
    """Whether another process holds the run folder's lock (a worker that outlived its campaign process)."""
    if not (folder / LOCK).is_file():
        return False
    try:
        RunLock(folder).acquire().release()
        return False
    except RunLockedError:
        return True


def finished(folder: Path) -> bool:
    return (folder / "metrics.json").is_file()


def job_state(job: Job, home: Path, cards_dir: Path) -> tuple[str, Optional[Recipe], Path]:
    """(state, recipe to train, folder): state is done, finished (to publish), partial, diverged or new."""
    retried = job.retry is not None and job.folder(home).with_name(job.folder(home).name + DIVERGED).is_dir()
    recipe, folder = (job.retry, job.folder(home, True)) if retried else (job.recipe, job.folder(home))
    decided = job.replace == "better" and decision_path(home, job, recipe).is_file()  # the card validated better
    # a pilot whose run is the published card's own (same recipe and seed) is done too, on any machine; so is an
    # entry whose card a later entry has taken over (a longer schedule published, or kept out by a better card)
    if (published_with(job, recipe, cards_dir) or (job.publish and decided)
            or any(job_state(j, home, cards_dir)[0] == "done" for j in job.later)):
        return "done", recipe, folder
    if finished(folder):
        return ("finished" if job.publish else "done"), recipe, folder
    if (retried or job.retry is None) and folder.with_name(folder.name + DIVERGED).is_dir():
        return "diverged", recipe, folder   # reported, not retried (again)
    return ("partial" if find_checkpoint(folder) is not None else "new"), recipe, folder


# ---------------------------------------------------------------------------------------------------------
# estimates and the status file


def speed_key(model: str, data: str, threads: int, amp: str = "none") -> str:
    """The key of a measured speed in ``speeds.json`` (bf16 trains a ResNet-20 ~1.7x faster than fp32 here)."""
    return f"{model}.{data}@{threads}" + ("" if amp == "none" else f":{amp}")


def read_record(path: Path) -> dict:
    """A JSON object the campaign wrote (``speeds.json``, a run's ``status.json``): {} when absent; a damaged one is
    one line that names the file (it is a record of measurements: delete it and they are taken again)."""
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise ConfigError(f"{path} is damaged ({error}): delete it, the campaign measures it again") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path} is damaged (not a JSON object): delete it, the campaign measures it again")
    bad = next((k for k, v in record.items() if path.name == "speeds.json" and (
        isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0)), None)
    if bad is not None:
        raise ConfigError(f"{path} is damaged (entry {bad!r}: {record[bad]!r} is no images/s): delete it, the "
                         "campaign measures it again")
    return record


def speed(home: Path, recipe: Recipe, threads: int) -> float:
    """Training images/s of the recipe's model and data with ``threads`` threads in its precision (``amp``): the last
    measured here, else the
    model's measured on other catalogued data (scaled by pixels an image: the MNISTs come padded to 32x32 as
    CIFAR-10; an image folder's key does not say its size), else the default."""
    measured = read_record(home / "speeds.json")
    key = speed_key(recipe.model, recipe.data, threads, recipe.amp)
    if measured.get(key):
        return measured[key]
    pixels = math.prod(data_info(recipe).input_size[1:])
    for data, info in DATASETS.items():
        other = measured.get(speed_key(recipe.model, data, threads, recipe.amp))
        if other and data != "imagefolder":
            return other * math.prod(info.input_size[1:]) / pixels
    default, times = by_model_class(DEFAULT_SPEED, recipe.model)
    return default[threads] / times if default else 100.0 * threads


@functools.cache
def _class_and_size(arch: str) -> tuple[str, int]:
    """The model class and parameter count of ``arch`` at its defaults (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = ARCHITECTURES[arch]()
    return type(model).__name__, sum(p.numel() for p in model.parameters())


def by_model_class(table: dict, arch: str) -> tuple[Optional[object], float]:
    """``arch``'s entry in a table keyed by model class (``None`` if its class has none), and how many times the
    parameters of the entry's architecture ``arch`` has."""
    family, size = _class_and_size(arch)
    if family not in table:
        return None, 1.0
    reference, value = table[family]
    return value, size / _class_and_size(reference)[1]


def robustness_s(arch: str) -> float:
    """Seconds to attack a card of ``arch`` with 2 threads (600 for a model class not measured)."""
    seconds, times = by_model_class(ROBUSTNESS_S, arch)
    return seconds * times if seconds else 600.0


def train_images(recipe: Recipe) -> int:
    return recipe.limit_train or DATASETS[recipe.data].train_size or 50_000


def checkpoint_state(folder: Path) -> dict:
    """The state.json of the run's checkpoint, as resume finds it ({} when it has none, or an unreadable one)."""
    found = find_checkpoint(folder)
    try:
        state = json.loads((found / "state.json").read_text()) if found is not None else {}
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def epochs_done(folder: Path) -> int:
    try:
        return int(checkpoint_state(folder).get("epoch", 0))
    except (ValueError, TypeError):
        return 0


def epoch_s(recipe: Recipe, home: Path, threads: int) -> float:
    """Seconds of one epoch at the speed measured so far (validation counted as 10 % more images)."""
    return train_images(recipe) * 1.1 / speed(home, recipe, threads)


def next_epoch_s(history: list[dict], recipe: Recipe, home: Path, threads: int) -> float:
    """Seconds a run's next epoch should take: the median of its last five epochs (an epoch slowed by a paused or
    busy machine is not the next one), else, before it has any, the speed measured so far (:func:`epoch_s`)."""
    times = [row.get("epoch_time_s") for row in history if isinstance(row, dict)]  # a carried file may be odd
    recent = sorted([t for t in times if isinstance(t, (int, float))][-5:])
    return recent[len(recent) // 2] if recent else epoch_s(recipe, home, threads)


def seconds_left(recipe: Recipe, folder: Path, home: Path, threads: int) -> float:
    """Remaining seconds of a run, with its start (``START_S``): at the pace of its own last epochs when it has
    any (also those trained on another machine and carried here), else at the speed measured so far."""
    history = checkpoint_state(folder).get("history")
    return (max(0, recipe.epochs - epochs_done(folder))
            * next_epoch_s(history if isinstance(history, list) else [], recipe, home, threads) + START_S)


def write_status(home: Path, jobs: list[Job], cards_dir: Path, active: dict, threads: int) -> dict:
    rows, eta = [], 0.0
    for job in jobs:
        state, recipe, folder = job_state(job, home, cards_dir)
        if state in ("done", "diverged"):
            rows.append({"run": folder.name, "state": state})
            continue
        live = read_record(folder / "status.json")
        left = live.get("eta_s") if folder.name in active else None
        left = seconds_left(recipe, folder, home, threads) if left is None else left
        eta += 0 if state == "finished" else left
        rows.append({"run": folder.name, "state": "training" if folder.name in active else state,
                     "epoch": epochs_done(folder), "epochs": recipe.epochs, "images_per_s": live.get("images_per_s"),
                     "eta_s": round(left)})
    status = {"updated": time.strftime("%Y-%m-%d %H:%M:%S"), "threads_per_run": threads, "in_flight": sorted(active),
              "finished_unpublished": [r["run"] for r in rows if r["state"] == "finished"],
              "queue_eta_s": round(eta), "runs": rows}
    write_json(home / "campaign.json", status)
    return status


# ---------------------------------------------------------------------------------------------------------
# one run (the worker process)


def next_run(jobs: list[Job], home: Path, cards_dir: Path, skip: set, elsewhere: set, budget_left: float,
             threads: int) -> tuple[Optional[tuple], Optional[tuple]]:
    """What to train next, as ``(job, recipe, folder)``, in queue order: (the first run that can end inside
    ``budget_left`` seconds: a partial one can when its start and one epoch fit, as it stops at an epoch boundary;
    the first new run that cannot, but of which ``MIN_EPOCHS`` epochs fit: with ``--carry-over`` it starts when
    nothing else is left to do, and resumes in the next campaign). Runs named in ``skip`` are passed over; runs
    another process trains are added to ``elsewhere`` (and removed once free)."""
    later = None
    for job in jobs:
        state, recipe, folder = job_state(job, home, cards_dir)
        if state not in ("new", "partial") or folder.name in skip:
            continue
        if in_use(folder):
            elsewhere.add(folder.name)  # a worker left by an earlier campaign process: wait for it
            continue
        elsewhere.discard(folder.name)
        if (state == "partial" and epoch_s(recipe, home, threads) + START_S <= budget_left
                or seconds_left(recipe, folder, home, threads) <= budget_left):
            return (job, recipe, folder), later
        if later is None and state == "new" and MIN_EPOCHS * epoch_s(recipe, home, threads) + START_S <= budget_left:
            later = (job, recipe, folder)
    return None, later


def train_one(recipe: Recipe, folder: Path, home: Path, deadline: float, threads: int, chance_epochs: int,
              carry: Optional[Path] = None) -> int:
    """Train (or resume) one run until it ends or the next epoch would pass ``deadline`` (a time.time()). A run
    that cannot end by then is copied to ``carry`` after each epoch: a session that stops without warning leaves
    it in the work tree. Exit codes: 0 finished, 3 stopped for the budget, 4 diverged."""
    torch.set_num_threads(threads)
    name = folder.name
    trainer = Trainer(recipe, folder, resume=True, progress=False, name=name, log=lambda line: log(line, home))
    try:
        chance = 100.0 / trainer.info.num_classes
        while not trainer.done:
            next_s = next_epoch_s(trainer.history, recipe, home, threads) * 1.15  # with a margin
            if time.time() + next_s > deadline:
                log(f"[{name}] stopping at epoch {trainer.epoch}: the next (~{next_s:.0f}s) would pass the budget",
                    home)
                return 3
            for x, y in trainer.begin_epoch():
                trainer.step(x, y)
            row = trainer.end_epoch()
            images_per_s = train_images(recipe) / row["epoch_time_s"]
            typical_s = next_epoch_s(trainer.history, recipe, home, threads)
            eta = (recipe.epochs - trainer.epoch) * typical_s * 1.05
            write_json(folder / "status.json", {
                "epoch": trainer.epoch, "epochs": recipe.epochs, "images_per_s": round(images_per_s),
                "mean_images_per_s": round(trainer.images_trained / trainer.train_time_s),
                "median_images_per_s": round(train_images(recipe) / typical_s), "eta_s": round(eta),
                "threads": threads})
            log(f"[{name}] epoch {trainer.epoch}/{recipe.epochs}: {images_per_s:,.0f} img/s ({threads} "
                f"thread{'s' * (threads > 1)}), val top1 {row['val_top1'] or 0:.2f}, ETA of the run "
                f"{eta / 60:.0f} min ({time.strftime('%H:%M', time.localtime(time.time() + eta))})", home)
            if trainer.epoch == chance_epochs and max(r["val_top1"] or 0 for r in trainer.history) < chance + 2:
                raise NonFiniteError(f"{name}: validation top-1 {row['val_top1']:.2f} after {trainer.epoch} epochs, "
                                     f"at chance ({chance:.0f}%)")
            if carry is not None and time.time() + eta > deadline:  # it ends elsewhere, maybe on another machine
                try:
                    _copy_run(folder, carry / name)
                except OSError as error:  # the run goes on: the copy is for another machine, not for this one
                    log(f"[{name}] could not copy it to {carry}: {error}", home)
        trainer.finish()
        return 0
    except NonFiniteError as error:
        log(f"[{name}] DIVERGED: {error}", home)
        return 4
    finally:
        trainer.close()


# ---------------------------------------------------------------------------------------------------------
# publishing


def publish_card(job: Job, recipe: Recipe, home: Path, cards_dir: Path, jobs: list[Job],
                 readme: Optional[Path], index_path: Path) -> Optional[str]:
    """Publish the card of ``job`` when every seed of its recipe has finished; returns the card's name when
    it was built (None when seeds are still training or the published card validates better)."""
    siblings = [j for j in jobs if j.card == job.card and j.index == job.index]
    folders = []
    for sibling in siblings:
        _, sibling_recipe, folder = job_state(sibling, home, cards_dir)
        if not finished(folder):
            return None
        folders.append(folder)
    for folder in folders:  # trained here, carried from another machine or imported: measured here, on these bytes
        remeasure(folder, home)
    runs = [Run(f) for f in folders]
    new_val = max(r.metrics["val_top1"] for r in runs)
    old = card_record(cards_dir, job.card)
    same_recipe = old is not None and published_with(job, recipe, cards_dir)
    if old is not None and not same_recipe and job.replace == "better":
        old_val = old["metrics"].get("val_top1")
        if old_val is not None and old_val >= new_val:
            for sibling, folder in zip(siblings, folders):
                write_json(decision_path(home, sibling, job_state(sibling, home, cards_dir)[1]),
                           {"card": job.card, "kept_val_top1": old_val, "new_val_top1": new_val,
                            "run": str(folder), "decided": time.strftime("%Y-%m-%d %H:%M:%S")})
            log(f"{job.card}: kept the published card (val {old_val:.2f}) over {len(runs)} new run(s) "
                f"(best val {new_val:.2f})", home)
            return None
    build_card(folders, cards_dir, readme, index_path, card=job.card)
    log(f"published {cards_dir / job.card} from {len(runs)} run(s): best val {new_val:.2f}", home)
    return job.card


def needs_attack(job: Job, home: Path, cards_dir: Path) -> bool:
    """A card of this queue, published with this run's recipe, whose robustness block has no Square rows yet (the
    cards attacked before Square get it, with the gradient attacks again for the worst case)."""
    cfg = card_record(cards_dir, job.card)
    if not job.publish or cfg is None or any(row.get("attack") == "square"
                                             for row in cfg["metrics"].get("robustness") or []):
        return False
    state, recipe, _ = job_state(job, home, cards_dir)
    return state == "done" and published_with(job, recipe, cards_dir)


def attack(card: str, home: Path, cards_dir: Path, threads: int, limit: int) -> subprocess.Popen:
    """``biotorch robustness`` with each attack of ``ATTACK_PLAN`` in turn on the same ``limit`` test images, each
    written into the card folder as it ends; one process (a shell) to wait for."""
    commands = [[sys.executable, "-m", "biotorch", "robustness", card, "--attack", attacks,
                 *(["--eps", eps] if eps else []), "--limit", str(limit), "--device", "cpu", "--threads", str(threads),
                 "--write", str(cards_dir)] for attacks, eps in ATTACK_PLAN]
    log(f"robustness of {card}: " + "; then ".join(f"biotorch {shlex.join(c[3:])}" for c in commands), home)
    out = open(home / "logs" / f"robustness-{card}.log", "a")
    return subprocess.Popen(["/bin/sh", "-c", " && ".join(map(shlex.join, commands))], stdout=out,
                            stderr=subprocess.STDOUT)


def build_card(folders: list[Path], cards_dir: Path, readme, index_path, *, card: str) -> None:
    """The card folder from its runs, then the index and the README table that list it (under the cards' lock)."""
    with FolderLock(cards_dir, wait=True):
        build_card_folder(folders, cards_dir / card)
        build_index(cards_dir, index_path)
        if readme is not None and readme.is_file():
            update_readme_table(readme, index_path)


def published_job(card: str, jobs: list[Job], home: Path, cards_dir: Path) -> Optional[Job]:
    """The queue's job whose recipe ``card`` is published with (None when the card holds no run of the queue)."""
    return next((j for j in jobs if j.card == card and published_with(j, job_state(j, home, cards_dir)[1],
                                                                        cards_dir)), None)


def rebuild(card: str, jobs: list[Job], home: Path, cards_dir: Path, readme, index_path) -> None:
    """Build a published card again from its runs (after the attacks: the card shows their block). Every seed's run
    must be here: a card is never rebuilt from fewer runs than it was published with."""
    job = published_job(card, jobs, home, cards_dir)
    if job is None:
        raise FileNotFoundError(f"{cards_dir / card} holds no run of the queue")
    folders = [job_state(j, home, cards_dir)[2] for j in jobs if j.card == card and j.index == job.index]
    missing = [f.name for f in folders if not finished(f)]
    if missing:
        raise FileNotFoundError(f"{card}: no finished run in {folders[0].parent} for {', '.join(missing)}")
    build_card(folders, cards_dir, readme, index_path, card=card)


# ---------------------------------------------------------------------------------------------------------
# partial runs carried to another machine


def _run_folders(job: Job, home: Path) -> list[Path]:
    """Every folder a job may have in ``home`` (there or not): its run, its retry, and their diverged copies."""
    runs = [job.folder(home)] + ([job.folder(home, True)] if job.retry is not None else [])
    return [f for run in runs for f in (run, run.with_name(run.name + DIVERGED))]


def _behind(copy: Path, run: Path) -> bool:
    """Whether ``copy`` holds less of a run than ``run`` does: missing, fewer epochs, or unfinished."""
    return run.is_dir() and (not copy.is_dir() or epochs_done(copy) < epochs_done(run)
                             or finished(run) and not finished(copy))


def _staging(target: Path) -> Path:
    return target.with_name(f".{target.name}.new")


def _copy_run(source: Path, target: Path) -> None:
    """Copy a run folder whole (not its lock): staged beside ``target``, then swapped in by renames."""
    staging = _staging(target)
    shutil.rmtree(staging, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns(LOCK))
    replace_folder(staging, target)


def _copy_decisions(source: Path, target: Path) -> list[str]:
    """Copy each decision ``source`` holds and ``target`` does not (a decision is never changed)."""
    lines = []
    for path in sorted(source.glob("*.json")):
        if not (target / path.name).is_file():
            write_bytes(target / path.name, path.read_bytes())  # byte for byte, atomically
            lines.append(f"carried the decision {path.stem} to {target}")
    return lines


def _settle(jobs: list[Job], home: Path, carry: Path) -> None:
    """Mend the copies in ``carry`` that a stopped process cut short: a copy whose swap stopped between its two
    renames gets its previous version back; staging folders go."""
    for folder in (f for job in jobs for f in _run_folders(job, home)):
        restore_folder(carry / folder.name)
        shutil.rmtree(_staging(carry / folder.name), ignore_errors=True)


def carry_out(jobs: list[Job], home: Path, cards_dir: Path, carry: Path, attacks: bool = True) -> list[str]:
    """Keep in ``carry`` what a campaign elsewhere needs of each run not done (partial, finished but unpublished, or
    diverged, with its retry) and, with ``attacks``, of each finished run whose card waits for its attacks (the
    card is rebuilt from it after them): each of its folders is copied when the copy there is behind and no
    process trains it. Copies of runs that are done, or that the home no longer holds (a run renamed when it
    diverged), are removed. Returns what happened, as log lines."""
    _settle(jobs, home, carry)
    wanted, unwanted = {}, set()
    for job in jobs:
        state, _, folder = job_state(job, home, cards_dir)
        waits = state == "done" and attacks and finished(folder) and needs_attack(job, home, cards_dir)
        if state in ("partial", "finished", "diverged") or waits:
            for f in _run_folders(job, home):
                if f.is_dir():
                    wanted[f.name] = f
                else:
                    unwanted.add(f.name)
        elif state == "done":
            unwanted |= {f.name for f in _run_folders(job, home)}
    for name in unwanted - set(wanted):
        shutil.rmtree(carry / name, ignore_errors=True)
    lines = []
    for name, folder in wanted.items():
        if _behind(carry / name, folder) and not in_use(folder):
            try:
                _copy_run(folder, carry / name)
                what = ("finished" if finished(folder) else "diverged" if name.endswith(DIVERGED)
                        else f"epoch {epochs_done(folder)}")
                lines.append(f"carried {name} ({what}) to {carry}: commit it, and a campaign elsewhere resumes it")
            except OSError as error:
                lines.append(f"could not carry {name} to {carry}: {error}")
    lines += _copy_decisions(home / DECISIONS, carry / DECISIONS)  # without it, the run would train again
    if carry.is_dir() and not any(carry.iterdir()):
        carry.rmdir()
    return lines


def carry_in(jobs: list[Job], home: Path, carry: Path) -> list[str]:
    """Copy into ``home`` each folder of the queue's runs that ``carry`` holds further on than ``home`` does (what
    a campaign on another machine carried out); a finished run here is never replaced. Returns log lines."""
    _settle(jobs, home, carry)
    lines = []
    for job in jobs:
        for folder in _run_folders(job, home):
            source = carry / folder.name
            if _behind(folder, source) and not finished(folder) and not in_use(folder):
                _copy_run(source, folder)
                lines.append(f"resumes {folder.name} at epoch {epochs_done(folder)} from {carry}")
    _copy_decisions(carry / DECISIONS, home / DECISIONS)
    return lines


# ---------------------------------------------------------------------------------------------------------
# handed-over runs


def remeasure(folder: Path, home: Path, tolerance: float = 0.01) -> dict:
    """Evaluate a finished run's best weights on the test set here, in fp32 as ``biotorch eval`` does (its sha256
    checked first), against what its metrics.json claims: a card is built only from numbers measured on this
    machine on the bytes it publishes, whoever trained them. A claim measured in fp32 must match (top-1 within
    ``tolerance``, loss within 1e-4: another seed's weights do not); a run trained under autocast before its test
    set was evaluated in fp32 (no ``test_precision``) gets the fp32 numbers, the old top-1 kept beside them.
    Returns the measurement; raises RuntimeError on a mismatch."""
    run = Run(folder)
    printed, errors = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(errors):  # `biotorch eval`, as a user runs it
        code = cli.main(["eval", "--checkpoint", str(folder), "--data", run.metrics["dataset"], "--device", "cpu",
                         "--json"])
    if code:
        raise RuntimeError(f"{folder}: evaluation failed: {errors.getvalue().strip()[-500:]}")
    measured = json.loads(printed.getvalue())
    if measured["split"] != "test":
        raise RuntimeError(f"{folder}: evaluated on {measured['split']}, not the test set")
    claimed, claimed_loss = run.metrics["test_top1"], run.metrics.get("test_loss")
    autocast = "test_precision" not in run.metrics and run.recipe.get("amp") not in (None, "none")
    log(f"{folder.name}: test top-1 re-measured here {measured['top1']:.2f} on {measured['images']:,} images; "
        f"its metrics.json says {claimed:.2f}{' (under autocast)' if autocast else ''}", home)
    if autocast:  # bf16 and fp32 logits differ by a rounding: the same weights stay within a point
        tolerance, claimed_loss = max(tolerance, 1.0), None
    if abs(measured["top1"] - claimed) > tolerance or (
            isinstance(claimed_loss, (int, float)) and abs(measured["loss"] - claimed_loss) > 1e-4):
        raise RuntimeError(f"{folder}: re-measured test top-1 {measured['top1']:.2f} (loss {measured['loss']:.4f}) "
                           f"differs from metrics.json's {claimed:.2f}"
                           f"{f' (loss {claimed_loss:.4f})' if isinstance(claimed_loss, (int, float)) else ''}: "
                           "not the weights it describes")
    if autocast:
        write_json(folder / "metrics.json", {**run.metrics, "test_top1": measured["top1"], "test_top5": measured["top5"],
                                             "test_loss": measured["loss"], "test_precision": "fp32",
                                             "test_top1_autocast": claimed})
    return measured


def import_run(source: Path, home: Path, jobs: list[Job], tolerance: float = 0.01) -> Path:
    """Copy a finished run into the campaign after re-evaluating its best weights on the test set here."""
    run = Run(source)
    recipe = load_recipe_dict(run.recipe)
    matches = [j for j in jobs if recipe_key(j.recipe) == recipe_key(recipe) and j.recipe.seed == recipe.seed]
    if not matches:
        raise ValueError(f"{source}: its recipe is not one of the queue's runs (recipe hash {recipe_hash(recipe)})")
    target = matches[0].folder(home)
    if finished(target):
        raise FileExistsError(f"{target} already holds a finished run")
    staging = _staging(target)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging, ignore=shutil.ignore_patterns(LOCK))
    try:
        measured = remeasure(staging, home, tolerance)  # on the copy: the handed-over folder is never changed
        write_json(staging / "imported.json", {"from": str(source.resolve()), "test_top1_remeasured": measured["top1"],
                                               "images": measured["images"], "at": time.strftime("%Y-%m-%d %H:%M:%S")})
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


# ---------------------------------------------------------------------------------------------------------
# the campaign


def missing_data(jobs: list[Job], home: Path, cards_dir: Path) -> Optional[str]:
    """Why a run still to train cannot find its data, as one line; checked before the first run starts, so that a
    machine without the data stops at once instead of failing every run of the queue in turn."""
    checked = set()
    for job in jobs:
        state, recipe, _ = job_state(job, home, cards_dir)
        if state in ("done", "finished", "diverged") or (recipe.data, recipe.data_dir) in checked:
            continue
        checked.add((recipe.data, recipe.data_dir))
        try:
            load_split(recipe.data, "val", data_dir=recipe.data_dir, download=recipe.download)
        except FileNotFoundError as error:
            return f"{job.card} (seed {recipe.seed}): {' '.join(str(error).split())}"  # one line, as the CLI's
    return None


def campaign(args, jobs: list[Job]) -> int:
    home, cards_dir = args.home, args.cards_dir
    readme = None if args.no_readme else REPO_ROOT / "README.md"
    index_path = args.index
    start, cpus = time.time(), os.cpu_count() or 2
    deadline = start + args.budget_s
    threads = args.threads or max(1, cpus // args.jobs)
    missing = missing_data(jobs, home, cards_dir)
    if missing:
        print(f"cpu_zoo: error: {missing}", file=sys.stderr)
        return 2
    active: dict[str, tuple[subprocess.Popen, Job, Path]] = {}   # training runs by folder name
    attacks: dict[str, subprocess.Popen] = {}                    # attacks by card
    given_up: set[str] = set()
    stopped: set[str] = set()  # runs stopped for the budget: it only shrinks, so they do not start again
    elsewhere: set[str] = set()                                  # runs trained by another process
    log(f"campaign: {len(jobs)} runs in the queue, {args.jobs} at once x {threads} thread(s), budget "
        f"{args.budget_s:.0f}s (until {time.strftime('%H:%M', time.localtime(deadline))}), home {home}", home)
    while True:
        # runs of workers left by an earlier campaign process: those still held (a finished one is published)
        elsewhere = {name for name in elsewhere if in_use(home / "runs" / name)}
        for name, (process, job, folder) in list(active.items()):
            code = process.poll()
            if code is None:
                continue
            del active[name]
            _record_speed(home, job, folder, threads)
            if code == 4:
                os.replace(folder, folder.with_name(folder.name + DIVERGED))
                again = job.retry is None or folder != job.folder(home)
                log(f"{name} diverged: kept as {folder.name}{DIVERGED}; " +
                    ("not retried again" if again else "retrying once with the entry's retry keys"), home)
            elif code == 3:
                stopped.add(name)
            elif code != 0:
                given_up.add(name)
                log(f"{name} failed (exit {code}); see {home / 'logs' / (name + '.log')}", home)
        for card, process in list(attacks.items()):
            if process.poll() is not None:
                del attacks[card]
                log(f"robustness of {card}: exit {process.returncode}", home)
                if process.returncode == 0:
                    try:
                        rebuild(card, jobs, home, cards_dir, readme, index_path)
                    except Exception as error:
                        log(f"rebuilding {card} after the attacks failed: {type(error).__name__}: {error}", home)
                else:
                    given_up.add(card)
        # publish what finished (also runs that finished before this process started); bp first: the other
        # cards of an architecture cite its card as their baseline
        for job in sorted(jobs, key=lambda j: j.recipe.rule != "bp"):
            state, recipe, folder = job_state(job, home, cards_dir)
            if state == "finished" and folder.name not in active and folder.name not in given_up:
                try:
                    publish_card(job, recipe, home, cards_dir, jobs, readme, index_path)
                except Exception as error:  # one card's failure must not stop the campaign
                    given_up.add(folder.name)
                    log(f"publishing {job.card} from {folder.name} failed: {type(error).__name__}: {error}", home)
        # start what fits: training first, in queue order; attacks on new cards when no run fits
        now = time.time()
        while len(active) + len(attacks) < args.jobs:
            nxt, later = next_run(jobs, home, cards_dir, set(active) | given_up | stopped, elsewhere, deadline - now,
                                  threads)
            if len(active) + len(attacks) + len(elsewhere) >= args.jobs:
                break  # a worker of an earlier campaign process holds a place: --jobs counts it
            if nxt is None:
                card = next((j.card for j in jobs if args.robustness_limit > 0 and j.card not in attacks
                             and j.card not in given_up and now + robustness_s(j.arch) * 2 / threads <= deadline
                             and needs_attack(j, home, cards_dir)), None)
                if card is not None:
                    attacks[card] = attack(card, home, cards_dir, threads, args.robustness_limit)
                    continue
                nxt = later if args.carry_over else None
            if nxt is not None:
                job, recipe, folder = nxt
                log(f"start {folder.name} ({epochs_done(folder)}/{recipe.epochs} epochs done, "
                    f"~{seconds_left(recipe, folder, home, threads) / 60:.0f} min left at {threads} thread(s)"
                    f"{'' if nxt is not later else '; it cannot end inside this budget: it resumes in the next'})",
                    home)
                out = open(home / "logs" / f"{folder.name}.log", "a")
                command = [sys.executable, __file__, "--worker", str(folder), "--queue", str(args.queue),
                           "--home", str(home), "--deadline", str(deadline), "--threads", str(threads),
                           "--chance-epochs", str(args.chance_epochs), "--carry-dir", str(args.carry_dir)]
                active[folder.name] = (subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT), job, folder)
                continue
            break
        status = write_status(home, jobs, cards_dir, active, threads)
        if not active and not attacks and not elsewhere:
            left = [r for r in status["runs"] if r["state"] not in ("done", "diverged")]
            log(f"campaign stops: {len(left)} run(s) left (~{status['queue_eta_s'] / 3600:.1f} h at {threads} "
                f"thread(s)), {time.time() - start:.0f}s used of {args.budget_s:.0f}s", home)
            for line in carry_out(jobs, home, cards_dir, args.carry_dir, args.robustness_limit > 0):
                log(line, home)
            return 0
        time.sleep(args.poll_s)


def _record_speed(home: Path, job: Job, folder: Path, threads: int) -> None:
    status = folder / "status.json"
    if not status.is_file():
        diverged = folder.with_name(folder.name + DIVERGED) / "status.json"
        status = diverged if diverged.is_file() else status
    record = read_record(status)  # the median of the last epochs: a paused or busy one is no speed
    measured = record.get("median_images_per_s") or record.get("mean_images_per_s")
    if measured:
        known = read_record(home / "speeds.json")
        known[speed_key(job.arch, job.recipe.data, threads, job.recipe.amp)] = measured
        write_json(home / "speeds.json", known)


def show_status(args, jobs: list[Job]) -> int:
    threads = args.threads or max(1, (os.cpu_count() or 2) // args.jobs)
    status = write_status(args.home, jobs, args.cards_dir, {}, threads)
    for row in status["runs"]:
        extra = f" {row['epoch']}/{row['epochs']} epochs, ~{row['eta_s'] / 60:.0f} min left" if "epoch" in row else ""
        print(f"{row['run']:<60} {row['state']}{extra}")
    print(f"queue: ~{status['queue_eta_s'] / 3600:.1f} h of training left at the measured speeds")
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queue", type=Path, default=REPO_ROOT / "recipes" / "cpu_zoo.yaml")
    parser.add_argument("--home", type=Path, default=HOME, help=f"partial runs and the status file (default {HOME})")
    parser.add_argument("--cards-dir", type=Path, default=MIRROR)
    parser.add_argument("--index", type=Path, default=PRETRAINED_INDEX)
    parser.add_argument("--no-readme", action="store_true", help="leave the README's results table alone")
    parser.add_argument("--budget-s", type=float, help="no run starts that cannot end within this; partial runs "
                                                       "stop at the last epoch that ends within it")
    parser.add_argument("--carry-over", action="store_true", help="when nothing else is left, start the first run "
                        f"that cannot end within the budget if {MIN_EPOCHS} of its epochs fit; it resumes in the next "
                        "campaign (for runs longer than any one budget)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (default 1)")
    parser.add_argument("--robustness-limit", type=int, default=1000, help="test images attacked per new card "
                                                                            "(0: no attacks)")
    parser.add_argument("--chance-epochs", type=int, default=3, help="a run still at chance after this many epochs "
                                                                      "has diverged")
    parser.add_argument("--poll-s", type=float, default=10.0)
    parser.add_argument("--status", action="store_true", help="print the queue's state and exit")
    parser.add_argument("--carry-dir", type=Path, default=CARRY, help="partial runs copied here when a campaign "
                        f"stops, to commit, and resumed from here on another machine (default {CARRY})")
    parser.add_argument("--carry", action="store_true", help="copy the partial runs no process trains to "
                                                             "--carry-dir now and exit")
    parser.add_argument("--import", dest="imports", type=Path, nargs="+", help="finished runs handed over: "
                        "re-evaluate each on the test set here and add it to the campaign")
    parser.add_argument("--rebuild", action="store_true", help="build every published card of the queue again "
                        "from its runs (after a change to the card text); a card whose runs are not all here is skipped")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help="threads per run (default: the cores / --jobs)")
    args = parser.parse_args(argv)
    if args.jobs < 1 or (args.budget_s is not None and not math.isfinite(args.budget_s)):
        parser.error("--jobs must be at least 1 and --budget-s a number of seconds")
    if not (args.status or args.imports or args.worker or args.rebuild or args.carry or args.budget_s):
        parser.error("give --budget-s (the campaign), --status, --import, --rebuild or --carry")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        jobs = read_queue(args.queue)
    except (ValueError, FileNotFoundError, yaml.YAMLError) as error:
        print(f"cpu_zoo: error: {error}", file=sys.stderr)
        return 2
    try:
        return run(args, jobs)
    except ConfigError as error:  # a damaged record of the campaign's (speeds.json, a run's status.json)
        print(f"cpu_zoo: error: {error}", file=sys.stderr)
        return 2


def run(args, jobs: list[Job]) -> int:
    """What the command line asks, on the queue's ``jobs``."""
    args.home.mkdir(parents=True, exist_ok=True)
    (args.home / "logs").mkdir(exist_ok=True)
    if args.worker:
        match = [(j, r) for j in jobs for r in filter(None, (j.recipe, j.retry))
                 if args.worker.name == f"{j.card}-seed{r.seed}-{recipe_hash(r)}"]
        if not match:
            print(f"cpu_zoo: error: {args.worker.name} is not a run of {args.queue}", file=sys.stderr)
            return 2
        return train_one(match[0][1], args.worker, args.home, args.deadline, args.threads, args.chance_epochs,
                         args.carry_dir)
    if args.imports:
        for source in args.imports:
            try:
                log(f"imported {source} → {import_run(source, args.home, jobs)}", args.home)
            except (ValueError, RuntimeError, FileExistsError, FileNotFoundError) as error:
                print(f"cpu_zoo: error: {error}", file=sys.stderr)
                return 2
        return 0
    for line in carry_in(jobs, args.home, args.carry_dir):
        log(line, args.home)
    if args.carry:
        for line in carry_out(jobs, args.home, args.cards_dir, args.carry_dir, args.robustness_limit > 0):
            log(line, args.home)
        return 0
    if args.status:
        return show_status(args, jobs)
    if args.rebuild:
        readme = None if args.no_readme else REPO_ROOT / "README.md"
        published = (j for j in sorted(jobs, key=lambda j: j.recipe.rule != "bp")
                     if j.publish and published_job(j.card, jobs, args.home, args.cards_dir) is j)
        for card in dict.fromkeys(j.card for j in published):
            try:
                rebuild(card, jobs, args.home, args.cards_dir, readme, args.index)
                log(f"rebuilt {args.cards_dir / card}", args.home)
            except FileNotFoundError as error:
                log(f"skipped {error}", args.home)
        return 0
    return campaign(args, jobs)


if __name__ == "__main__":
    sys.exit(main())
