"""Train a zoo of runs together in one process: every (recipe, rule, seed), one step of each in turn.

On one GPU, runs interleave on separate CUDA streams (one process keeps the GPU busy where several
processes would contend). Each run writes its own folder, as ``biotorch train`` would, when it finishes;
launching the same command again resumes unfinished runs and skips finished ones.

Example::

    $ python scripts/train_zoo.py --recipe recipes/fashion_mnist/lenet.yaml --rules all --out runs/zoo
    $ python scripts/train_zoo.py --recipe recipes/cifar10_jpeg/resnet20.yaml \\
          --recipe recipes/fashion_mnist/resnet20.yaml --rules all --seeds 0 --max-concurrent 8 --out runs/zoo
    $ python scripts/train_zoo.py --recipe recipes/fashion_mnist/lenet.yaml --rules bp,fa \\
          --epochs 1 --limit-train 512 --device cpu --out /tmp/zoo        # a CPU smoke run
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

from biotorch.rules import RULES
from biotorch.training.recipe import load_recipe, parse_set
from biotorch.training.records import write_json
from biotorch.training.trainer import Trainer, train_together


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", required=True, help="a recipe YAML (repeatable)")
    parser.add_argument("--rules", default="all", help=f"comma-separated rules or 'all' ({','.join(RULES)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", required=True, help="folder holding one folder per run")
    parser.add_argument("--epochs", type=int, help="override every recipe's epochs")
    parser.add_argument("--limit-train", type=int, help="train on the first N training images only")
    parser.add_argument("--data", help="override every recipe's dataset")
    parser.add_argument("--data-dir", help="override every recipe's data_dir")
    parser.add_argument("--device", help="override every recipe's device")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="set a recipe key in every run (value read as YAML)")
    parser.add_argument("--max-concurrent", type=int, help="runs trained at once (default: all)")
    parser.add_argument("--tensorboard", action="store_true")
    return parser.parse_args(argv)


def plan(args) -> list[tuple[str, object]]:
    """(run folder, validated recipe) for every run; every recipe is checked before anything trains."""
    rules = list(RULES) if args.rules == "all" else [r.strip() for r in args.rules.split(",") if r.strip()]
    common = {k: v for k, v in dict(epochs=args.epochs, limit_train=args.limit_train, data=args.data,
                                    data_dir=args.data_dir, device=args.device).items() if v is not None}
    common.update(parse_set(args.set))
    runs = []
    for recipe_path in args.recipe:
        for rule in rules:
            for seed in args.seeds:
                recipe = load_recipe(recipe_path, {**common, "rule": rule, "seed": seed})
                runs.append((str(Path(args.out) / f"{recipe.model_name}.{recipe.data}-seed{seed}"), recipe))
    folders = [folder for folder, _ in runs]
    duplicates = sorted({f for f in folders if folders.count(f) > 1})
    if duplicates:
        raise ValueError(f"two runs would share a folder: {', '.join(duplicates)}")
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        runs = plan(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"train_zoo: error: {error}", file=sys.stderr)
        return 2
    print(f"train_zoo: {len(runs)} runs, {args.max_concurrent or len(runs)} at a time → {args.out}")
    makers = [functools.partial(Trainer, recipe, folder, resume=True, tensorboard=args.tensorboard,
                                progress=False, name=Path(folder).name) for folder, recipe in runs]
    start = time.perf_counter()
    results = train_together(makers, max_concurrent=args.max_concurrent)
    wall = time.perf_counter() - start
    summary, failed = [], 0
    print(f"\n{'run':<44} {'val top1':>8} {'test top1':>9} {'best':>4} {'img/s':>9}")
    for (folder, _), result in zip(runs, results):
        name = Path(folder).name
        if not isinstance(result, dict):
            failed += 1
            print(f"{name:<44} failed: {result}")
            summary.append({"run": name, "error": str(result)})
            continue
        val = "-" if result["val_top1"] is None else f"{result['val_top1']:.2f}"
        speed = result.get("images_per_s") or 0
        print(f"{name:<44} {val:>8} {result['test_top1']:>9.2f} {result['best_epoch']:>4} {speed:>9,.0f}")
        summary.append({"run": name, **{k: result[k] for k in ("val_top1", "test_top1", "test_top5",
                                                                "best_epoch", "images_per_s", "train_time_s")}})
    print(f"\n{len(runs) - failed}/{len(runs)} runs done in {wall:.1f}s")
    write_json(Path(args.out) / "zoo.json", {"runs": summary, "wall_time_s": wall})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
