"""Learning-rate search with the same budget for every rule, selected on the validation split only.

Runs ``biotorch train`` for every (rule, lr) pair with a short schedule, ``--jobs`` at a time (one thread
each), and prints and saves a table of validation top-1. Test accuracy is never read here.

    python scripts/lr_search.py --recipe recipes/fashion_mnist/lenet.yaml --lrs 0.02 0.05 0.1 --epochs 3 \
        --data-dir ../shared/data/fashion-mnist --out runs/search/lenet_fashion_mnist
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import biotorch


def run(recipe, rule, lr, args) -> float:
    out = Path(args.out) / f"{rule}-lr{lr:g}"
    if not (out / "metrics.json").exists():
        cmd = [sys.executable, "-m", "biotorch", "train", "--recipe", recipe, "--rule", rule, "--lr", str(lr),
               "--epochs", str(args.epochs), "--seed", str(args.seed), "--out", str(out), "--no-progress"]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        cmd += args.train_args.split()
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads((out / "metrics.json").read_text())["val_top1"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", required=True)
    parser.add_argument("--rules", nargs="+", default=list(biotorch.RULES))
    parser.add_argument("--lrs", nargs="+", type=float, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=100, help="a seed not used by the published runs")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train-args", default="", help='more `biotorch train` flags, e.g. "--optimizer adam"')
    args = parser.parse_args()
    grid = list(itertools.product(args.rules, args.lrs))
    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(zip(grid, pool.map(lambda rl: run(args.recipe, *rl, args), grid)))
    best = {rule: max(args.lrs, key=lambda lr: results[rule, lr]) for rule in args.rules}
    lines = ["| rule | " + " | ".join(f"lr {lr:g}" for lr in args.lrs) + " | chosen |",
             "| --- |" + " --- |" * (len(args.lrs) + 1)]
    for rule in args.rules:
        cells = " | ".join(f"{results[rule, lr]:.2f}" for lr in args.lrs)
        lines.append(f"| {rule} | {cells} | {best[rule]:g} |")
    table = "\n".join(lines)
    print(f"validation top-1 after {args.epochs} epochs (seed {args.seed}) {args.train_args}:\n{table}")
    Path(args.out, "search.md").write_text(table + "\n")
    Path(args.out, "search.json").write_text(json.dumps({"epochs": args.epochs, "seed": args.seed, "best_lr": best,
                                                         "val_top1": {f"{r}@{lr:g}": v for (r, lr), v in
                                                                      results.items()}}, indent=2))


if __name__ == "__main__":
    main()
