"""Do features learned with a rule on one dataset transfer to another? Fine-tuning against training from scratch.

For every rule, four runs of one recipe (same budget, seed and hyperparameters) that differ only in where they
start and what learns (``S`` is the source tag, ``lenet`` the recipe's architecture)::

    scratch       biotorch train --recipe R --rule RULE
    fine-tune     biotorch train --recipe R --init-from lenet_RULE.S                      (everything learns)
    probe         biotorch train --recipe R --init-from lenet_RULE.S --freeze-backbone    (only a new head learns)
    probe-random  biotorch train --recipe R --rule RULE --freeze-backbone                 (a head on random features)

Runs ``--jobs`` at a time with one thread each (finished runs are kept), then draws validation top-1 per epoch,
one panel per rule, and prints a markdown table of test top-1 (each run's test set evaluated once, on its best
validation epoch).

    python scripts/transfer.py --data-dir ../shared/data/cifar10-jpeg.tar.gz --rules bp fa kp \
        --out runs/transfer --plot docs/transfer_lenet_cifar10_jpeg_gray.png
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from biotorch.training import load_recipe
from biotorch.training.records import save_figure

VARIANTS = ("scratch", "fine-tune", "probe", "probe-random")
STYLES = {"scratch": ("tab:gray", "o-"), "fine-tune": ("tab:blue", "o-"), "probe": ("tab:blue", "s--"),
          "probe-random": ("tab:gray", "s--")}


def variant_args(variant: str, arch: str, rule: str, source: str) -> list[str]:
    start = ["--init-from", f"{arch}_{rule}.{source}"] if variant in ("fine-tune", "probe") else ["--rule", rule]
    return start + (["--freeze-backbone"] if variant.startswith("probe") else [])


def run(args, arch: str, rule: str, variant: str) -> dict:
    out = Path(args.out) / f"{rule}-{variant}"
    if not (out / "metrics.json").exists():
        cmd = [sys.executable, "-m", "biotorch", "train", "--recipe", args.recipe, "--seed", str(args.seed),
               "--out", str(out), "--no-progress", *variant_args(variant, arch, rule, args.source)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        print(" ".join(cmd[2:]), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)},
                       stdout=subprocess.DEVNULL)
    return {"metrics": json.loads((out / "metrics.json").read_text()),
            "history": json.loads((out / "history.json").read_text())}


def plot(results: dict, rules: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rules), figsize=(3.6 * len(rules), 3.4), sharey=True, squeeze=False)
    for ax, rule in zip(axes[0], rules):
        for variant in VARIANTS:
            history = results[rule, variant]["history"]
            color, style = STYLES[variant]
            ax.plot([r["epoch"] for r in history], [r["val_top1"] for r in history], style, color=color,
                    label=variant, markersize=3)
        ax.set(title=rule, xlabel="epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set(ylabel="validation top-1 (%)")
    axes[0][0].legend(fontsize=7)
    save_figure(fig, path, title)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="recipes/cifar10_jpeg_gray/lenet.yaml")
    parser.add_argument("--source", default="fashion_mnist", help="tag of the published checkpoints to start from")
    parser.add_argument("--rules", nargs="+", default=["bp", "fa", "kp"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--out", default="runs/transfer")
    parser.add_argument("--plot", default=None, help="PNG of the curves (default OUT/transfer.png)")
    args = parser.parse_args(argv)
    recipe = load_recipe(args.recipe)
    keys = [(rule, variant) for rule in args.rules for variant in VARIANTS]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(keys, pool.map(lambda key: run(args, recipe.model, *key), keys)))
    title = (f"{recipe.model} on {recipe.data}, {recipe.epochs} epochs: started from {args.source} "
             f"(blue) or from scratch (gray)")
    plot(results, args.rules, Path(args.plot or Path(args.out) / "transfer.png"), title)
    print(f"\n| rule | {' | '.join(VARIANTS)} |\n| --- |{' --- |' * len(VARIANTS)}")
    for rule in args.rules:
        print(f"| {rule} | " + " | ".join(f"{results[rule, v]['metrics']['test_top1']:.2f}" for v in VARIANTS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
