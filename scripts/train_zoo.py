"""Train a zoo of runs together in one process, inside a time budget: search, plan, train.

On one GPU, runs interleave on separate CUDA streams (one process keeps the GPU busy where several
processes would contend). Each run writes its own folder, as ``biotorch train`` would, when it finishes;
launching the same command again resumes unfinished runs and skips finished ones.

A zoo file (``recipes/zoo.yaml``) lists what to train: recipe, rules, seeds, an optional search grid and
whether the entry may be dropped when the budget is short. With ``--budget-s N`` the script

1. calibrates on the real recipes (scratch runs, CUDA-graph capture included, a few dozen steps each):
   seconds per step of every (recipe, rule), alone and all together, validation and checkpoint costs;
2. plans: the same fraction of every recipe's epochs (at least one) so that the search, the training and
   each run's test evaluation end inside N seconds; prints the plan before training;
3. searches (each rule the same grid, ``search_epochs`` each, seed ``search_seed``, chosen on validation
   only), then trains every run with its rule's winner; past the deadline runs stop on their best epoch.

``--probe`` prints versions, the device, one captured step per rule and a throughput table (images/s per
rule at batch 128 and 512, one run and all rules together) in well under a minute.

Example::

    $ python scripts/train_zoo.py --zoo recipes/zoo.yaml --out runs/gpu_zoo --budget-s 420
    $ python scripts/train_zoo.py --probe
    $ python scripts/train_zoo.py --recipe recipes/fashion_mnist/lenet.yaml --rules bp,fa \\
          --epochs 1 --limit-train 512 --device cpu --out /tmp/zoo        # a CPU smoke run
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import itertools
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch
import yaml

from bench_train import synthetic_train_size
from biotorch.files import load_yaml
from biotorch.rules import RULES, make_rule
from biotorch.training import evaluate
from biotorch.training.recipe import Recipe, load_recipe, make_recipe, parse_set
from biotorch.training.records import plot_curves, write_json
from biotorch.training.trainer import Trainer, seconds_per_round, train_together
from biotorch.version import __version__

START = time.perf_counter()


def log(line: str = "") -> None:
    print(f"[{time.perf_counter() - START:6.1f}s] {line}" if line else "", flush=True)


# ---------------------------------------------------------------------------------------------------------
# what to train


@dataclasses.dataclass
class Entry:
    """One line of the zoo: a recipe × rules × seeds, optionally searched first."""

    recipe: str
    rules: list[str]
    seeds: list[int]
    search: dict = dataclasses.field(default_factory=dict)  # key -> candidate values (lr_scale, feedback_init)
    search_epochs: int = 2
    search_seed: int = 100
    optional: bool = False      # dropped first when the budget is short

    def recipe_for(self, rule: str, overrides: dict) -> Recipe:
        return load_recipe(self.recipe, {**overrides, "rule": rule})


_SEARCH_KEYS = ("lr_scale", "feedback_init")
_ENTRY_KEYS = {f.name for f in dataclasses.fields(Entry)}


def _rules(value) -> list[str]:
    rules = list(RULES) if value in (None, "all") else (value.split(",") if isinstance(value, str) else list(value))
    for rule in rules:
        make_rule(rule)  # unknown names fail with the available ones
    return [r.strip() for r in rules]


def read_zoo(path) -> list[Entry]:
    """The entries of a zoo file, every key and recipe checked before anything starts."""
    data = load_yaml(Path(path).read_text(), str(path)) or {}
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{path}: a zoo file holds `runs:`, a list of {{recipe, rules, seeds, ...}}")
    entries = []
    for item in data["runs"]:
        unknown = set(item) - _ENTRY_KEYS
        if unknown:
            raise ValueError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(_ENTRY_KEYS))}")
        bad = set(item.get("search") or {}) - set(_SEARCH_KEYS)
        if bad:
            raise ValueError(f"{path}: search keys are {', '.join(_SEARCH_KEYS)}, got {', '.join(sorted(bad))}")
        entry = Entry(**{**item, "rules": _rules(item.get("rules")), "seeds": list(item.get("seeds", [0])),
                         "search": dict(item.get("search") or {})})
        for rule in entry.rules:
            entry.recipe_for(rule, {})
        entries.append(entry)
    return entries


def candidates(entry: Entry, rule: str) -> list[dict]:
    """The search grid for ``rule``: a key the rule does not take (feedback_init for bp) is left out, so
    those rules search fewer candidates; every candidate gets the same epochs."""
    grid = {k: v for k, v in entry.search.items() if k != "feedback_init" or "feedback_init" in RULES[rule].options}
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def apply_choice(recipe: Recipe, choice: dict) -> dict:
    """Recipe overrides for a search candidate (lr_scale multiplies the rule's own lr)."""
    overrides = {}
    if "lr_scale" in choice:
        overrides["lr"] = recipe.lr * float(choice["lr_scale"])
    if "feedback_init" in choice:
        overrides["rule_options"] = {**recipe.rule_options, "feedback_init": choice["feedback_init"]}
    return overrides


def label(choice: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in choice.items()) or "default"


@dataclasses.dataclass
class Run:
    folder: Path
    recipe: Recipe
    entry: int
    nominal_epochs: int
    search: Optional[dict] = None   # the candidate, for search runs


def main_runs(entries: list[Entry], out: Path, common: dict, choices: dict) -> list[Run]:
    runs = []
    for index, entry in enumerate(entries):
        for rule in entry.rules:
            base = entry.recipe_for(rule, common)
            extra = apply_choice(base, choices.get((index, rule), {}))
            for seed in entry.seeds:
                recipe = entry.recipe_for(rule, {**common, **extra, "seed": seed})
                runs.append(Run(out / f"{recipe.model_name}.{recipe.data}-seed{seed}", recipe, index, recipe.epochs))
    folders = [str(r.folder) for r in runs]
    duplicates = sorted({f for f in folders if folders.count(f) > 1})
    if duplicates:
        raise ValueError(f"two runs would share a folder: {', '.join(duplicates)}")
    return runs


def search_runs(entries: list[Entry], out: Path, common: dict) -> list[Run]:
    runs = []
    for index, entry in enumerate(entries):
        for rule in entry.rules:
            base = entry.recipe_for(rule, common)
            grid = candidates(entry, rule)
            if len(grid) < 2:
                continue
            for choice in grid:
                recipe = entry.recipe_for(rule, {**common, **apply_choice(base, choice), "seed": entry.search_seed,
                                                 "epochs": entry.search_epochs, "alignment_every": 0})
                # beside, not inside, the runs folder: publishing reads every run under it
                folder = Path(f"{out}-search") / f"{recipe.model_name}.{recipe.data}-{label(choice)}"
                runs.append(Run(folder, recipe, index, entry.search_epochs, choice))
    return runs


# ---------------------------------------------------------------------------------------------------------
# calibration and the plan


@dataclasses.dataclass
class Cost:
    """Measured seconds of one (recipe, rule): a training step alone, a validation pass, an epoch's writes."""

    step_s: float
    val_s: float
    epoch_end_s: float
    test_s: float
    steps_per_epoch: int


def _scratch(recipe: Recipe, folder: Path) -> Trainer:
    return Trainer(recipe, folder, log=None, progress=False)


def calibrate(runs: list[Run], steps: int, scratch: Path) -> tuple[dict, float]:
    """Cost of every distinct (entry, rule) on scratch copies of the real runs, and the speed-up of training
    them all together over one after another (≥ 1)."""
    costs, trainers, alone = {}, {}, 0.0
    for run in runs:
        key = (run.entry, run.recipe.rule)
        if key in costs:
            continue
        trainer = _scratch(dataclasses.replace(run.recipe, epochs=max(run.recipe.epochs, 1)), scratch / f"{len(costs)}")
        step_s = seconds_per_round([trainer], steps)
        start = time.perf_counter()
        with trainer.stream_context():
            evaluate(trainer.model, trainer.val_loader, trainer.info.num_classes, autocast=trainer._autocast)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize(trainer.device)
        val_s = time.perf_counter() - start
        start = time.perf_counter()
        trainer.end_epoch()  # validation again, alignment, history, best weights, checkpoint
        epoch_end_s = time.perf_counter() - start
        start = time.perf_counter()
        plot_curves(scratch / "curves.png", trainer.history * 2, "calibration")
        plot_s = time.perf_counter() - start
        test_s = val_s * max(1.0, trainer.info.test_size / max(1, len(trainer.val_y))) + 2 * plot_s
        costs[key] = Cost(step_s, val_s, epoch_end_s, test_s, len(trainer.train_loader))
        trainers[key] = trainer
        alone += step_s
        log(f"calibrated {run.recipe.model_name} on {run.recipe.data}: {1000 * step_s:.2f} ms/step "
            f"({run.recipe.batch_size / step_s:,.0f} img/s), val {val_s:.2f}s, epoch end {epoch_end_s:.2f}s")
    together = seconds_per_round(list(trainers.values()), max(3, steps // 3)) if len(trainers) > 1 else alone
    speedup = max(1.0, alone / together) if together > 0 else 1.0
    log(f"all {len(trainers)} together: {1000 * together:.1f} ms per round of steps; {speedup:.2f}x over one by one")
    for trainer in trainers.values():
        trainer.close()
    del trainers
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return costs, speedup


def run_seconds(cost: Cost, epochs: int, speedup: float) -> float:
    return epochs * (cost.steps_per_epoch * cost.step_s / speedup + cost.epoch_end_s) + cost.test_s


def epochs_for(run: Run, fraction: float) -> int:
    return max(1, min(run.nominal_epochs, math.floor(fraction * run.nominal_epochs + 1e-9)))


def plan(runs: list[Run], searches: list[Run], costs: dict, speedup: float, budget: float):
    """(fraction of nominal epochs, expected seconds, whether the search is kept) within ``budget``."""
    def total(fraction, with_search):
        main = sum(run_seconds(costs[(r.entry, r.recipe.rule)], epochs_for(r, fraction), speedup) for r in runs)
        search = sum(run_seconds(costs[(r.entry, r.recipe.rule)], r.nominal_epochs, speedup) for r in searches)
        return main + (search if with_search else 0.0)

    def best_fraction(with_search):
        if total(0.0, with_search) > budget:
            return None
        if total(1.0, with_search) <= budget:
            return 1.0
        low, high = 0.0, 1.0
        for _ in range(30):
            middle = (low + high) / 2
            low, high = (middle, high) if total(middle, with_search) <= budget else (low, middle)
        return low

    without = best_fraction(False)
    searched = best_fraction(True) if searches else None
    # The search is kept when the runs it informs still get at least half the epochs they would without it.
    if searched is not None and without is not None and searched >= 0.5 * without:
        return searched, total(searched, True), True
    fraction = without if without is not None else 0.0
    return fraction, total(fraction, False), False


# ---------------------------------------------------------------------------------------------------------
# training


def train(runs: list[Run], deadline: Optional[float], max_concurrent: Optional[int], tensorboard: bool = False):
    makers = [functools.partial(Trainer, r.recipe, r.folder, resume=True, tensorboard=tensorboard,
                                progress=False, name=r.folder.name, log=log) for r in runs]
    return train_together(makers, max_concurrent=max_concurrent, log=log, deadline=deadline)


def summarise(runs: list[Run], results: list, title: str) -> list[dict]:
    log(f"{title}:")
    print(f"{'run':<52} {'epochs':>6} {'val top1':>8} {'test top1':>9} {'img/s':>9}", flush=True)
    summary = []
    for run, result in zip(runs, results):
        name = run.folder.name
        if not isinstance(result, dict):
            print(f"{name:<52} failed: {result}", flush=True)
            summary.append({"run": name, "error": str(result)})
            continue
        val = "-" if result["val_top1"] is None else f"{result['val_top1']:.2f}"
        epochs = f"{result.get('epochs_trained', result['epochs'])}/{result['epochs']}"
        print(f"{name:<52} {epochs:>6} {val:>8} {result['test_top1']:>9.2f} {result.get('images_per_s') or 0:>9,.0f}",
              flush=True)
        summary.append({"run": name, "search": run.search, **{k: result.get(k) for k in (
            "epochs", "epochs_trained", "val_top1", "test_top1", "best_epoch", "images_per_s", "train_time_s")}})
    return summary


def choose(searches: list[Run], results: list) -> dict:
    """The candidate with the best validation top-1 for every (entry, rule); test accuracy is never read."""
    best: dict = {}
    for run, result in zip(searches, results):
        if isinstance(result, dict) and result.get("val_top1") is not None:
            key = (run.entry, run.recipe.rule)
            if key not in best or result["val_top1"] > best[key][0]:
                best[key] = (result["val_top1"], run.search)
    return {key: choice for key, (_, choice) in best.items()}


# ---------------------------------------------------------------------------------------------------------
# the probe


def probe(device: str, steps: int) -> int:
    versions = {"python": platform.python_version(), "torch": torch.__version__, "biotorch": __version__}
    for name in ("torchvision", "timm", "safetensors", "huggingface_hub"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = "missing"
    log("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    cuda = device.startswith("cuda") and torch.cuda.is_available()
    log(f"device: {torch.cuda.get_device_name() if cuda else 'cpu'}; cuda {torch.version.cuda}, "
        f"{torch.cuda.device_count()} GPU(s)" if cuda else f"device: cpu ({torch.get_num_threads()} threads)")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (128, 512):
            with synthetic_train_size(max(2048, 4 * batch)):
                trainers = {}
                for rule in RULES:
                    recipe = make_recipe({"model": "resnet20", "data": "synthetic", "rule": rule, "batch_size": batch,
                                          "epochs": 1, "amp": "bf16" if cuda else "none", "channels_last": cuda,
                                          "cuda_graph": cuda, "device": device, "alignment_every": 0, "lr": 0.01,
                                          "val_size": 0, **({"optimizer": "adam", "lr": 1e-3} if rule == "dfa" else {})})
                    try:
                        trainer = _scratch(recipe, Path(tmp) / f"{rule}-{batch}")
                        seconds = seconds_per_round([trainer], steps)
                        trainers[rule] = trainer
                        rows.append((rule, batch, "alone", batch / seconds))
                        log(f"resnet20 {rule:<4} batch {batch}: {'graph-captured' if cuda else 'eager'} step ok, {batch / seconds:>10,.0f} img/s")
                    except Exception as error:  # one rule's failure is a result too
                        log(f"resnet20 {rule:<4} batch {batch}: FAILED {type(error).__name__}: {error}")
                if len(trainers) > 1:
                    seconds = seconds_per_round(list(trainers.values()), steps)
                    rows.append(("all", batch, f"{len(trainers)} together", batch * len(trainers) / seconds))
                    log(f"resnet20 all {len(trainers)} rules together, batch {batch}: "
                        f"{batch * len(trainers) / seconds:,.0f} img/s")
                for trainer in trainers.values():
                    trainer.close()
                del trainers
    print(f"\n{'rule':<6} {'batch':>5} {'how':<13} {'images/s':>11}", flush=True)
    for rule, batch, how, speed in rows:
        print(f"{rule:<6} {batch:>5} {how:<13} {speed:>11,.0f}", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------
# command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--zoo", help="a zoo file (recipes/zoo.yaml)")
    what.add_argument("--recipe", action="append", help="a recipe YAML (repeatable), with --rules and --seeds")
    what.add_argument("--probe", action="store_true", help="versions, device, one captured step per rule, speeds")
    parser.add_argument("--rules", default="all", help=f"comma-separated rules or 'all' ({','.join(RULES)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", help="folder holding one folder per run")
    parser.add_argument("--budget-s", type=float, help="search, training and test evaluation end within this")
    parser.add_argument("--calibration-steps", type=int, default=24)
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs")
    parser.add_argument("--limit-train", type=int, help="train on the first N training images only")
    parser.add_argument("--data", help="override every recipe's dataset")
    parser.add_argument("--data-dir", help="override every recipe's data_dir")
    parser.add_argument("--device", help="override every recipe's device")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set a recipe key in every run (value read as YAML)")
    parser.add_argument("--max-concurrent", type=int, help="runs trained at once (default: all)")
    parser.add_argument("--tensorboard", action="store_true")
    args = parser.parse_args(argv)
    if not args.probe and not args.out:
        parser.error("--out is required (unless --probe)")
    if not (args.probe or args.zoo or args.recipe):
        parser.error("give --zoo, --recipe or --probe")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.probe:
        return probe(args.device or ("cuda" if torch.cuda.is_available() else "cpu"), args.calibration_steps)
    common = {k: v for k, v in dict(epochs=args.epochs, limit_train=args.limit_train, data=args.data,
                                    data_dir=args.data_dir, device=args.device).items() if v is not None}
    out = Path(args.out)
    try:
        common.update(parse_set(args.set))
        entries = (read_zoo(args.zoo) if args.zoo else
                   [Entry(r, _rules(args.rules), list(args.seeds)) for r in args.recipe])
        runs, searches = main_runs(entries, out, common, {}), search_runs(entries, out, common)
    except (ValueError, FileNotFoundError, yaml.YAMLError) as error:
        print(f"train_zoo: error: {error}", file=sys.stderr)
        return 2
    deadline = None
    if args.budget_s is not None:
        deadline = START + args.budget_s
        scratch = Path(tempfile.mkdtemp(prefix="calibration-", dir=out.parent if out.parent.exists() else None))
        try:
            costs, speedup = calibrate(runs + searches, args.calibration_steps, scratch)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        remaining = deadline - time.perf_counter()
        fraction, expected, keep_search = plan(runs, searches, costs, speedup, remaining)
        if expected > remaining:  # even one epoch each does not fit: drop optional entries
            optional = {i for i, e in enumerate(entries) if e.optional}
            runs = [r for r in runs if r.entry not in optional]
            fraction, expected, keep_search = plan(runs, [], costs, speedup, remaining)
            log(f"dropped optional entries {sorted(optional)}: one epoch of everything does not fit")
        if searches and not keep_search:
            log(f"search dropped: its {len(searches)} runs would take more than half the epochs of the runs")
        searches = searches if keep_search else []
        log(f"PLAN: {len(searches)} search runs, {len(runs)} runs, {fraction:.1%} of each recipe's epochs, "
            f"expected {expected:.0f}s of {remaining:.0f}s left")
        for index, entry in enumerate(entries):
            members = [r for r in runs if r.entry == index]
            if members:
                epochs = epochs_for(members[0], fraction)
                seconds = sum(run_seconds(costs[(r.entry, r.recipe.rule)], epochs, speedup) for r in members)
                log(f"  {entry.recipe}: {len(members)} runs x {epochs} epochs (of {members[0].nominal_epochs}), "
                    f"~{seconds:.0f}s")
        runs = [dataclasses.replace(r, recipe=dataclasses.replace(r.recipe, epochs=epochs_for(r, fraction)))
                for r in runs]
        # Runs stopped by the deadline are still tested and plotted: keep the time that takes.
        deadline -= sum(costs[(r.entry, r.recipe.rule)].test_s for r in runs) + 2.0
    summary = {}
    if searches:
        log(f"search: {len(searches)} runs")
        results = train(searches, deadline, args.max_concurrent)
        summary["search"] = summarise(searches, results, "search")
        choices = choose(searches, results)
        summary["choices"] = {f"{entries[i].recipe}:{rule}": c for (i, rule), c in choices.items()}
        for (i, rule), choice in choices.items():
            log(f"chosen on validation for {rule} in {entries[i].recipe}: {label(choice)}")
        planned = {r.folder: r.recipe.epochs for r in runs}  # the plan's epochs, the search's choices
        runs = [dataclasses.replace(r, recipe=dataclasses.replace(r.recipe, epochs=planned[r.folder]))
                for r in main_runs(entries, out, common, choices) if r.folder in planned]
    log(f"training {len(runs)} runs, {args.max_concurrent or len(runs)} at a time → {out}")
    start = time.perf_counter()
    results = train(runs, deadline, args.max_concurrent, args.tensorboard)
    summary["runs"] = summarise(runs, results, "runs")
    summary["wall_time_s"] = time.perf_counter() - start
    failed = sum(not isinstance(r, dict) for r in results)
    log(f"{len(runs) - failed}/{len(runs)} runs done in {summary['wall_time_s']:.1f}s")
    write_json(out / "zoo.json", summary)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
