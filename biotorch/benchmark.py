"""``biotorch bench RULE``: train a rule on one of the zoo's recipes and set it beside the published cards.

The run is the zoo's protocol: the recipe's training set, the checkpoint chosen on the held-out validation split,
the test set evaluated once (:class:`biotorch.training.Trainer`). Then, beside every published card of the same
architecture and data: test and validation top-1, the mean angle between forward and feedback weights at the end
of training, and top-1 under FGSM with exact gradients at ε = 0.05 (on the first ``--attack-images`` test images for
the new run; the cards' own blocks for theirs). A table on stdout, a bar chart as PNG.

Example::

    $ biotorch bench signfa                                   # LeNet on Fashion-MNIST, recipes/fashion_mnist/lenet.yaml
    $ biotorch bench signfa --recipe recipes/cifar10_jpeg/resnet20.yaml --budget-s 3600
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional


from . import registry
from .card import pct
from .errors import ConfigError
from .files import REPO_ROOT, write_json
from .hub import MIRROR
from .pretrained import from_checkpoint
from .registry import CheckpointRecord
from .robustness.attacks import HEADLINE_EPS, evaluate_robustness
from .robustness.cli import load_images
from .robustness.report import find_row
from .training.recipe import Recipe, load_recipe, recipe_changes
from .training.records import save_figure
from .training.trainer import Trainer

__all__ = ["DEFAULT_RECIPE", "benchmark"]

DEFAULT_RECIPE = REPO_ROOT / "recipes" / "fashion_mnist" / "lenet.yaml"
_COMPARED = ("epochs", "batch_size", "optimizer", "lr", "schedule", "augment", "val_size", "limit_train")


def _mean_angle(records: list) -> Optional[float]:
    """The mean over layers of the angle between W and B at the last alignment record (None if none)."""
    angles = [v.get("angle") for v in (records[-1]["layers"].values() if records else ())]
    angles = [a for a in angles if isinstance(a, (int, float)) and math.isfinite(a)]
    return sum(angles) / len(angles) if angles else None


def _fgsm(block: Optional[list]) -> Optional[float]:
    row = find_row(block or [], "fgsm", HEADLINE_EPS, "exact")
    return row["top1"] if row else None


def _angle_of(folder: Path) -> Optional[float]:
    path = folder / "alignment.json"
    return _mean_angle(json.loads(path.read_text())) if path.is_file() else None


def _card_row(record: CheckpointRecord) -> dict:
    angle = _angle_of(MIRROR / record.name)  # cards published before alignment.json was kept have none
    m = record.metrics
    return {"name": record.name, "rule": record.rule, "test_top1": m["test_top1"], "val_top1": m.get("val_top1"),
            "seeds": m.get("seeds", 1), "epochs": m.get("epochs"), "angle": angle,
            "fgsm": _fgsm(m.get("robustness")), "recipe": record.recipe}


def _train(recipe: Recipe, run_dir: Path, budget_s: Optional[float], log) -> tuple[dict, int]:
    """Train (or resume) the run, within ``budget_s`` when given; returns (metrics, epochs trained)."""
    saved = run_dir / "recipe.yaml"
    changed = recipe_changes(load_recipe(saved, resolved=True), recipe) if saved.is_file() else []
    if changed:  # the run would go on with its saved optimizer and schedule under a recipe.yaml that says otherwise
        raise ConfigError(f"{run_dir} holds a bench run of another recipe ({'; '.join(changed)}): run it again as "
                          "it was, or choose another --out")
    trainer = Trainer(recipe, run_dir, resume=saved.is_file(), progress=False, log=log)
    start = time.monotonic()
    try:
        last = 0.0
        while not trainer.done:
            if budget_s is not None and time.monotonic() - start + last > budget_s:
                log(f"bench: the budget ({budget_s:.0f} s) ends before epoch {trainer.epoch + 1} of {recipe.epochs}: "
                    f"stopped; the numbers are not comparable to a full run of the recipe")
                break
            began = time.monotonic()
            for x, y in trainer.begin_epoch():
                trainer.step(x, y)
            trainer.end_epoch()
            last = time.monotonic() - began
        return trainer.finish(), trainer.epoch
    finally:
        trainer.close()


def benchmark(recipe: Recipe, run_dir: Path, *, budget_s: Optional[float] = None, attack_images: int = 1000,
              plot: Optional[Path] = None, log=print) -> list[dict]:
    """Train ``recipe`` into ``run_dir`` and return the comparison rows: the published cards of its architecture and
    data, then this run (``"this run": True``), sorted by test top-1."""
    metrics, epochs = _train(recipe, Path(run_dir), budget_s, log)
    mine = {"name": f"{recipe.model_name} (this run)", "rule": recipe.rule, "test_top1": metrics["test_top1"],
            "val_top1": metrics["val_top1"], "seeds": 1, "epochs": epochs, "this run": True,
            "angle": _angle_of(Path(run_dir)), "fgsm": None, "recipe": recipe.to_dict()}
    if attack_images and metrics["test_top1"] is not None:
        model = from_checkpoint(run_dir).eval()
        images, labels, split = load_images(recipe.data, recipe.data_dir, limit=attack_images)
        block = evaluate_robustness(model, images, labels, attacks=["fgsm"], eps=[HEADLINE_EPS],
                                    gradients=["exact"], split=split, progress=False)
        mine["fgsm"] = _fgsm(block)
    cards = [_card_row(r) for r in registry._pretrained().values()
             if r.arch == recipe.model and r.dataset == recipe.data and not r.init_from]
    rows = sorted([*cards, mine], key=lambda r: -(r["test_top1"] if r["test_top1"] is not None else -1))
    differ = sorted({k for c in cards for k in _COMPARED if (c["recipe"] or {}).get(k) != mine["recipe"].get(k)})
    if differ:
        log(f"bench: this run's recipe differs from the cards' in {', '.join(differ)}: compare with care")
    write_json(Path(run_dir) / "bench.json", rows)
    if plot is not None:
        _plot(rows, Path(plot), f"{recipe.model} on {recipe.data}: test top-1 (%), published cards and this run")
    return rows


def table(rows: list[dict]) -> str:
    """The rows as a text table (``biotorch bench``'s output)."""
    header = ["model", "rule", "test top-1 %", "val top-1 %", "seeds", "epochs", "angle(W,B) °",
              f"FGSM ε={HEADLINE_EPS} %"]
    cells = [[r["name"], r["rule"], pct(r["test_top1"]), pct(r["val_top1"]), str(r["seeds"]), str(r["epochs"]),
              "–" if r["angle"] is None else f"{r['angle']:.1f}", pct(r["fgsm"])] for r in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *cells]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(rows), 3.5))
    names = [r["rule"] + (" (this run)" if r.get("this run") else "") for r in rows]
    values = [r["test_top1"] or 0.0 for r in rows]
    ax.bar(names, values, color=["tab:orange" if r.get("this run") else "tab:blue" for r in rows])
    ax.set_ylabel("test top-1 (%)")
    ax.tick_params(axis="x", rotation=45)
    save_figure(fig, path, title)
