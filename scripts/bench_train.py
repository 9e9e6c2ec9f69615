"""Training speed per rule and batch size: images/s, ms per step, epoch time, ratio to bp (not a test).

Times the trainer's real step (``Trainer.step``: forward, backward, optimizer, feedback update) on data
resident on the device, after warm-up; bp is measured in the same process for the ratios.

Example::

    $ python scripts/bench_train.py --model lenet --rules all --batch-sizes 128 --device cpu
    $ python scripts/bench_train.py --model resnet20 --rules bp,fa,dfa --batch-sizes 128 512 \\
          --amp bf16 --channels-last --cuda-graph                       # one H100
    $ python scripts/bench_train.py --model resnet20 --rules fa --batch-sizes 128 --cuda-graph --together 4
    $ python scripts/bench_train.py --model resnet20 --rules all --device cpu --channels-last --amp none bf16
          # fp32 and bf16 in one process: each rule against bp in its precision, and against fp32's bp
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import torch

from biotorch.data import DATASETS, SYNTHETIC
from biotorch.rules import RULES
from biotorch.training import Trainer, datasets, make_recipe
from biotorch.training.runtime import resolve_amp
from biotorch.training.trainer import seconds_per_round


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--rules", default="all", help=f"comma-separated or 'all' ({','.join(RULES)})")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128])
    parser.add_argument("--data", default="synthetic",
                        help="synthetic (random 1x32x32 images) or a dataset name, e.g. cifar10_jpeg")
    parser.add_argument("--data-dir")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=8, help="untimed steps first (graph capture, compile)")
    parser.add_argument("--amp", nargs="+", default=["none"], choices=("none", "bf16", "fp16", "auto"),
                        help="precisions to measure, each in turn (auto: the fastest this machine has)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--cuda-graph", action="store_true")
    parser.add_argument("--compile", default="none")
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--augment", default="crop_flip")
    parser.add_argument("--together", type=int, default=1, help="runs trained together (one stream each)")
    parser.add_argument("--epoch-images", type=int, default=50_000, help="images per epoch for epoch time")
    parser.add_argument("--json", help="also write the results to this JSON file")
    return parser.parse_args(argv)


@contextlib.contextmanager
def synthetic_train_size(size: int):
    """The synthetic dataset grown to ``size`` training images while the block runs (for timing only)."""
    original = DATASETS[SYNTHETIC]
    DATASETS[SYNTHETIC] = dataclasses.replace(original, train_size=size)
    datasets.clear_cache()
    try:
        yield
    finally:
        DATASETS[SYNTHETIC] = original
        datasets.clear_cache()


def make_trainer(args, amp: str, rule: str, batch: int, folder: Path, index: int) -> Trainer:
    data = "synthetic" if args.data == "synthetic" else args.data
    recipe = make_recipe({"model": args.model, "data": data, "data_dir": args.data_dir, "rule": rule,
                          "batch_size": batch, "epochs": 1, "amp": amp, "channels_last": args.channels_last,
                          "cuda_graph": args.cuda_graph, "compile": args.compile, "device": args.device,
                          "optimizer": args.optimizer, "augment": args.augment, "alignment_every": 0,
                          "lr": 0.01, "seed": index, "val_size": 0 if data == "synthetic" else None})
    if data != "synthetic":
        return Trainer(recipe, folder / f"{amp}-{rule}-{batch}-{index}", log=None, progress=False)
    # synthetic (1x32x32; a 3-channel stem costs next to nothing more), grown to a few batches per epoch
    with synthetic_train_size(max(8192, 4 * batch)):
        return Trainer(recipe, folder / f"{amp}-{rule}-{batch}-{index}", log=None, progress=False)


def measure(args, amp: str, rule: str, batch: int, folder: Path) -> dict:
    trainers = [make_trainer(args, amp, rule, batch, folder, i) for i in range(args.together)]
    seconds = seconds_per_round(trainers, args.steps, args.warmup)
    images = batch * args.together
    return {"amp": trainers[0].amp, "rule": rule, "batch": batch, "together": args.together,
            "images_per_s": images / seconds,
            "ms_per_step": 1000 * seconds / args.together,
            "epoch_s": args.epoch_images / (images / seconds) * args.together}


def main(argv=None) -> int:
    args = parse_args(argv)
    rules = list(RULES) if args.rules == "all" else [r.strip() for r in args.rules.split(",")]
    if "bp" not in rules:
        rules.insert(0, "bp")  # the reference for the ratios
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    cuda = str(device).startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    precisions = ", ".join(f"{amp} ({resolve_amp(amp, torch.device(device))[1]})" if amp == "auto" else amp
                           for amp in args.amp)
    print(f"{args.model} on {name}; amp {precisions}, channels_last {args.channels_last}, cuda_graph "
          f"{args.cuda_graph}, compile {args.compile}, {args.together} run(s) together")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for amp in args.amp:
            for batch in args.batch_sizes:
                for rule in rules:
                    try:
                        results.append(measure(args, amp, rule, batch, Path(tmp)))
                    except Exception as error:  # report and go on: one rule's failure is a result too
                        print(f"{rule} batch {batch} amp {amp}: failed: {type(error).__name__}: {error}",
                              file=sys.stderr)
    bp = {(r["amp"], r["batch"]): r["images_per_s"] for r in results if r["rule"] == "bp"}
    print(f"\n{'amp':<5} {'rule':<6} {'batch':>6} {'images/s':>11} {'vs bp':>6} {'vs fp32 bp':>10} {'ms/step':>8} "
          f"{'epoch s':>8}  (epoch = {args.epoch_images:,} images{', per run' if args.together > 1 else ''})")
    for r in results:
        same, fp32 = bp.get((r["amp"], r["batch"])), bp.get(("none", r["batch"]))
        r["ratio_to_bp"] = r["images_per_s"] / same if same else None
        r["ratio_to_fp32_bp"] = r["images_per_s"] / fp32 if fp32 else None
        ratio, to_fp32 = (f"{x:.2f}" if x else "-" for x in (r["ratio_to_bp"], r["ratio_to_fp32_bp"]))
        print(f"{r['amp']:<5} {r['rule']:<6} {r['batch']:>6} {r['images_per_s']:>11,.0f} {ratio:>6} {to_fp32:>10} "
              f"{r['ms_per_step']:>8.2f} {r['epoch_s']:>8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
