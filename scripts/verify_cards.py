"""Load published checkpoints through ``torch.hub.load(<clone>, ..., source="local")`` and check their cards.

Each checkpoint is evaluated on its test set on ``--device`` under the autocast and memory format it was
trained with, and compared with the test top-1 its card reports. Exit 1 if any differs by more than
``--tolerance`` points or fails to load.

Example::

    $ python scripts/verify_cards.py 'resnet20_*' 'lenet_*' --device cuda
"""
from __future__ import annotations

import argparse
import sys

import torch

import biotorch
from biotorch.data import DeviceLoader
from biotorch.training import datasets, evaluate


def verify(name: str, device: str, data_dir=None) -> tuple[float, float]:
    """(top-1 through torch.hub, top-1 on the card) of the pretrained checkpoint ``name``."""
    cfg = biotorch.get_pretrained_cfg(name)
    arch_rule, _, tag = name.partition(".")
    model = torch.hub.load(".", arch_rule, source="local", tag=tag, device=device, trust_repo=True)
    if cfg.recipe.get("channels_last"):
        model = model.to(memory_format=torch.channels_last)
    images, labels = datasets.load(cfg.dataset, "test", data_dir, device=device)
    loader = DeviceLoader(images, labels, 1000, cfg.mean, cfg.std, train=False, device=device)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.recipe.get("amp"))
    autocast = (lambda: torch.autocast(torch.device(device).type, dtype=amp)) if amp else None
    return evaluate(model, loader, cfg.num_classes, autocast=autocast)["top1"], cfg.metrics["test_top1"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="*", default=["*"], help="globs of pretrained names (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir")
    parser.add_argument("--tolerance", type=float, default=0.1, help="points of top-1")
    args = parser.parse_args(argv)
    names = sorted({n for p in args.patterns for n in biotorch.list_models(p, pretrained=True)})
    bad = 0
    for name in names:
        try:
            hub_top1, card_top1 = verify(name, args.device, args.data_dir)
        except Exception as error:  # report every checkpoint, then fail
            print(f"{name}: FAILED {type(error).__name__}: {error}", flush=True)
            bad += 1
            continue
        ok = abs(hub_top1 - card_top1) <= args.tolerance
        bad += not ok
        print(f"{name}: torch.hub top-1 {hub_top1:.2f}  card {card_top1:.2f}  {'OK' if ok else 'MISMATCH'}", flush=True)
    print(f"{len(names) - bad}/{len(names)} checkpoints match their cards on {args.device}", flush=True)
    return 1 if bad or not names else 0


if __name__ == "__main__":
    sys.exit(main())
