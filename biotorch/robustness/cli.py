"""``biotorch robustness``: the images to attack, the checkpoints, the attacks run in worker processes, and
the command line."""
from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..data import load_samples
from ..errors import shorten
from ..factory import create_model
from ..files import SAMPLES
from ..hub import folder_sha256, recorded_sha256
from ..registry import get_pretrained_cfg, list_models
from ..targets import open_target
from ..training import datasets
from ..training.runtime import resolve_device
from ..weights import kind
from .attacks import (ATTACK_TITLES, ATTACKS, DEFAULT_ATTACKS, DEFAULT_EPS, GRADIENT_ATTACKS, GRADIENTS, SOURCES,
                      SQUARE_EPS, SQUARE_QUERIES, SUBSET_SEED, accuracy, check_attacks, check_eps, check_gradients,
                      check_precision, check_queries, eps_text, evaluate_robustness)
from .report import find_row, vanished_lines, write_block

def load_images(dataset: str, data_dir=None, *, limit: Optional[int] = None, samples: bool = False,
                device=None, log=None, info=None) -> tuple[Tensor, Tensor, str]:
    """(images as floats in [0, 1], labels, split) of the test set, found as ``biotorch eval`` finds it
    (``data_dir``, ``$BIOTORCH_DATA``, the cache, system folders), else the sample images in ``samples/``.

    ``limit``: a fixed random sample of that many images (seed ``SUBSET_SEED``, in file order), the same for every
    model; the first N would be one class where the files are sorted by class (cifar10_jpeg's are). ``info``: what an
    image folder's images are brought to (the model's size and channels: :func:`biotorch.data.load_split`).

    Example::

        >>> images, labels, split = load_images("fashion_mnist", limit=100)
        >>> images.shape, split
        (torch.Size([100, 1, 32, 32]), 'test')
    """

    folder = SAMPLES / dataset
    try:
        if samples:
            raise FileNotFoundError("--samples")
        images, labels = datasets.load(dataset, "test", data_dir, info=info)
        split = "test"
    except FileNotFoundError as error:
        if not (folder / "labels.csv").is_file():
            raise
        if not samples and log is not None:
            log(f"no {dataset} test set found ({shorten(str(error), 200)}); attacking the sample "
                f"images in {folder} instead")
        images, labels = load_samples(folder, dataset)
        split = "samples"
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be a positive number of images, got {limit}")
        if limit < len(labels):  # a fixed sample of every class: test files may come sorted by class
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SUBSET_SEED))
            keep = order[:limit].sort().values
            images, labels = images[keep], labels[keep]
    return images.to(device).float().div_(255), labels.to(device), split


# --------------------------------------------------------------------------------------------------------
# the card: metrics.json, model-index, README section, `biotorch info`


def _names(patterns: Sequence[str]) -> list[str]:

    names = []
    for pattern in patterns:
        if kind(pattern) != "name":  # a checkpoint folder or hf-hub: repo
            names.append(pattern)
            continue
        matches = list_models(pattern, pretrained=True) if any(c in pattern for c in "*?[") else None
        if matches == []:
            raise ValueError(f"no pretrained model matches {pattern!r}; see `biotorch list --pretrained`")
        names += matches or [get_pretrained_cfg(pattern).name]
    return list(dict.fromkeys(names))


def _load(name: str, device: torch.device) -> nn.Module:

    model = create_model(name, pretrained=True, device=device)
    # channels_last lets oneDNN run the convolutions' input gradients ~1.7x faster on CPU (LeNet, torch 2.14)
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


def _card_folder(cards_dir: str, cfg) -> Path:
    folder = Path(cards_dir) / cfg.name
    if folder_sha256(folder) != recorded_sha256({"files": cfg.files}):
        raise ValueError(f"{folder} does not hold the published weights of {cfg.name}: --write takes the folder "
                         "holding the card folders (e.g. model_cards)")
    return folder


def _attack_all(names: list[str], args, worker: int = 0) -> list[dict]:
    """One process: the targets in turn, sharing each bp model and the examples crafted on it. With
    ``--write`` each block is written as soon as its model is done, so a run cut short keeps what it did."""

    device = resolve_device(args.device)
    if device.type == "cpu":
        # LeNet-sized attacks gain nothing from a second intra-op thread and lose up to 6x when the cores are
        # shared (measured on 2 cores, torch 2.14): --jobs uses the cores with one process each.
        torch.set_num_threads(args.threads)
    log = lambda message: print(f"biotorch robustness: {message}", file=sys.stderr)  # noqa: E731
    # Square has no gradient source: no bp model to load when it is the only attack
    gradients = check_gradients(args.gradient) if set(check_attacks(args.attack)) & set(GRADIENT_ATTACKS) else []
    sources: dict[str, tuple[nn.Module, dict]] = {}  # the bp model of each target, and its crafted examples
    data: dict[str, tuple[Tensor, Tensor, str]] = {}  # loaded once per dataset
    outputs = []
    for name in names:
        if kind(name) != "name":
            target = open_target(name, data=args.data, data_dir=args.data_dir, device=device)
            model, label, dataset, info = target.model, target.label, target.dataset, target.info
            images = load_images(dataset, target.data_dir, limit=args.limit, samples=args.samples, device=device,
                                 log=log, info=info)
            if "transfer" in gradients:
                log(f"{label}: no transfer gradient (it is crafted on the published bp model of the same data; a "
                    "checkpoint folder has none)")
            outputs.append(_attack(model, images, label, dataset, args, worker,
                                   [g for g in gradients if g != "transfer"], None))
            continue
        cfg = get_pretrained_cfg(name)
        model = sources[cfg.name][0] if cfg.name in sources else _load(cfg.name, device)
        if cfg.dataset not in data:
            data[cfg.dataset] = load_images(cfg.dataset, args.data_dir, limit=args.limit, samples=args.samples,
                                            device=device, log=log)
        transfer = None
        if "transfer" in gradients:
            bp_name = f"{cfg.arch}_bp.{cfg.tag}"
            if bp_name not in sources:  # a bp target is its own transfer source: one attack, crafted once
                try:
                    bp = model if cfg.name == bp_name else _load(get_pretrained_cfg(bp_name).name, device)
                except ValueError:
                    raise ValueError(f"the transfer gradient needs the bp checkpoint {bp_name}, which is not "
                                     "published; choose --gradient exact,rule") from None
                sources[bp_name] = (bp, {})
            transfer = sources[bp_name]
        outputs.append(_attack(model, data[cfg.dataset], cfg.name, cfg.dataset, args, worker, gradients, transfer))
        if args.write:
            written = write_block(_card_folder(args.write, cfg), outputs[-1]["robustness"],
                                  weights_sha256=recorded_sha256({"files": cfg.files}))
            log(f"wrote {written}")
    return outputs


def _attack(model: nn.Module, data: tuple[Tensor, Tensor, str], label: str, dataset: str, args, worker: int,
            gradients: list[str], transfer) -> dict:
    """One model's clean top-1 and robustness block on ``data`` (images, labels, split)."""
    images, labels, split = data
    clean = accuracy(model, images, labels, batch_size=args.batch_size)
    block = evaluate_robustness(model, images, labels, transfer_model=transfer and transfer[0],
                                attacks=check_attacks(args.attack), eps=args.eps and check_eps(args.eps),
                                gradients=gradients, seed=args.seed, batch_size=args.batch_size,
                                split=split, transfer_cache=transfer and transfer[1], queries=args.queries,
                                precision=args.precision,
                                progress=False if args.json else {"desc": label, "position": worker})
    for line in vanished_lines(block):
        print(f"biotorch robustness: warning: {label}: {line}", file=sys.stderr)
    return {"model": label, "dataset": dataset, "split": split, "images": len(labels), "clean_top1": clean,
            "robustness": block}


def run_robustness(args) -> int:

    check_attacks(args.attack), args.eps is None or check_eps(args.eps), check_gradients(args.gradient)
    check_queries(args.queries), check_precision(args.precision)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {args.limit}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be a positive number of images, got {args.batch_size}")
    names = _names(args.name)
    folders = [n for n in names if kind(n) != "name"]
    if args.write and folders:
        raise ValueError(f"--write records published models in their cards; {folders[0]} is a checkpoint: use --json")
    for name in names if args.write else ():  # every card folder checked before any attack
        _card_folder(args.write, get_pretrained_cfg(name))
    jobs = max(1, min(args.jobs, len(names)))
    if jobs > 1 and resolve_device(args.device).type != "cpu":
        raise ValueError("--jobs runs several CPU processes; on a GPU use one (drop --jobs)")
    if jobs == 1:
        outputs = _attack_all(names, args)
    else:  # each process attacks every jobs-th target (and crafts its own transfer examples once)

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = pool.map(_attack_all, [names[i::jobs] for i in range(jobs)], [args] * jobs, range(jobs))
            by_name = {output["model"]: output for part in parts for output in part}
        outputs = [by_name[name] for name in names]
    for output in outputs:
        if not args.json:
            _print_table(output)
    if args.json:
        print(json.dumps(outputs[0] if len(outputs) == 1 else outputs, indent=2))
    return 0


def _print_table(result: dict) -> None:
    block = result["robustness"]
    sources = [g for g in SOURCES if any(r["gradient"] == g for r in block)]
    print(f"{result['model']} on {result['dataset']} {result['split']} ({result['images']:,} images): "
          f"clean top-1 {result['clean_top1']:.2f}%")
    print(f"  {'attack':<10} {'eps':>7}  " + "  ".join(f"{g:>8}" for g in sources))
    for attack, eps in dict.fromkeys((r["attack"], r["eps"]) for r in block):
        cells = [find_row(block, attack, eps, g) for g in sources]
        print(f"  {ATTACK_TITLES[attack]:<10} {eps_text(eps):>7}  "
              + "  ".join(f"{'–':>8}" if c is None else f"{c['top1']:>7.2f}%" for c in cells))


def add_commands(subparsers) -> None:
    """Register ``biotorch robustness`` on the ``biotorch`` command line."""
    parser = subparsers.add_parser(
        "robustness", help="top-1 of a pretrained model under FGSM/PGD with exact, rule or transfer gradients, "
        "Square with none, and the worst case",
        description="Top-1 of pretrained models under FGSM and PGD-10, the examples crafted with the exact gradient, "
                    "the model's learning rule's gradient, or the bp model's (transfer); under Square, which queries "
                    "the model's outputs and uses no gradient; and the worst case per image over them all.")
    parser.add_argument("name", nargs="+", help="pretrained name(s) or glob(s), e.g. lenet_fa.fashion_mnist or "
                        "'lenet_*.fashion_mnist' (transfer examples are crafted once for all), or checkpoint "
                        "folders (yours: a run, save_pretrained's) or hf-hub:<org>/<repo>")
    parser.add_argument("--data", help="dataset a checkpoint folder is attacked on (default: the one it was trained "
                        "on, where it says)")
    parser.add_argument("--attack", default=",".join(DEFAULT_ATTACKS), help=f"comma-separated: {','.join(ATTACKS)} "
                        f"(PGD-10; Square: minutes a model; default {','.join(DEFAULT_ATTACKS)})")
    parser.add_argument("--eps", help="L∞ radii in pixel units (pixels in [0, 1]), comma-separated; 8/255 is "
                        f"accepted (default: {','.join(map(str, DEFAULT_EPS))} for FGSM and PGD, "
                        f"{','.join(map(eps_text, SQUARE_EPS))} for Square)")
    parser.add_argument("--queries", type=int, default=SQUARE_QUERIES, help="Square's queries an image "
                        f"(default {SQUARE_QUERIES:,}, AutoAttack's); it stops querying an image once fooled")
    parser.add_argument("--precision", default="auto", help="auto (default): Square queries in bf16 where that is "
                        "faster and gives every clean image fp32's prediction; fp32. Top-1 is always fp32's")
    parser.add_argument("--gradient", default=",".join(GRADIENTS),
                        help="comma-separated gradient sources: exact, rule, transfer (from the bp model)")
    parser.add_argument("--limit", type=int, help="attack N images only: a fixed random sample of the test set, the "
                                                   "same for every model")
    parser.add_argument("--data-dir", help="folder holding the dataset files (else $BIOTORCH_DATA, the cache, "
                        "system folders; the sample images in samples/ when none has the test set)")
    parser.add_argument("--samples", action="store_true", help="attack the sample images in samples/<dataset>")
    parser.add_argument("--seed", type=int, default=0, help="seed of PGD's random start and Square's squares "
                        "(default 0)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (default 1: as fast for "
                        "small models, and far faster on shared cores)")
    parser.add_argument("--jobs", type=int, default=1, help="CPU processes, each attacking a share of the models "
                        "(e.g. 2 on a 2-core machine)")
    parser.add_argument("--write", metavar="CARDS_DIR", help="also write each block into "
                        "CARDS_DIR/<name>/metrics.json (e.g. model_cards; the card must hold the same weights)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (no progress bar)")
    parser.set_defaults(handler=run_robustness)
