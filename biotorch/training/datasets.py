"""The trainer's view of data: ``biotorch.data`` splits, plus ``synthetic``, a tiny learnable dataset.

``synthetic`` needs no files: ten classes, each a fixed random 32×32 pattern plus per-image noise and
jitter, generated from a fixed seed (the same images in every run). Tests and smoke runs use it offline.

Example::

    >>> info = dataset_info("synthetic")
    >>> images, labels = load("synthetic", "train")
    >>> images.shape, info.num_classes
    (torch.Size([1024, 1, 32, 32]), 10)
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data import DATASETS, DatasetInfo, imagefolder_info, load_split
from .recipe import SYNTHETIC

SYNTHETIC_INFO = DatasetInfo(
    SYNTHETIC, 10, tuple(f"class_{i}" for i in range(10)), 1, (1, 32, 32), (0.5,), (0.25,),
    1024, 256, 512, "bilinear", "Tiny generated dataset (10 noisy patterns) for tests and smoke runs.")
_SYNTHETIC_SEED = 1234

_cache: dict[tuple, tuple[Tensor, Tensor]] = {}


def dataset_info(name: str, data_dir=None) -> DatasetInfo:
    if name == SYNTHETIC:
        return SYNTHETIC_INFO
    if name == "imagefolder":
        return imagefolder_info(data_dir)
    return DATASETS[name]


def _synthetic(part: str) -> tuple[Tensor, Tensor]:
    info = SYNTHETIC_INFO
    g = torch.Generator().manual_seed(_SYNTHETIC_SEED)
    prototypes = F.interpolate(torch.rand(info.num_classes, 1, 8, 8, generator=g), size=32, mode="bilinear")
    count = info.train_size + info.val_size if part == "train" else info.test_size
    g.manual_seed(_SYNTHETIC_SEED + (part == "test"))
    labels = torch.randint(0, info.num_classes, (count,), generator=g)
    shifts = torch.randint(-2, 3, (count, 2), generator=g)
    images = prototypes[labels] + 0.35 * torch.randn(count, 1, 32, 32, generator=g)
    images = torch.stack([img.roll(tuple(s.tolist()), dims=(1, 2)) for img, s in zip(images, shifts)])
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def _holdout(n: int, val_size: int) -> tuple[Tensor, Tensor]:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return perm[val_size:].sort().values, perm[:val_size].sort().values


def load(name: str, split: str, data_dir=None, *, download: bool = False, val_size: Optional[int] = None,
         device=None) -> tuple[Tensor, Tensor]:
    """``(uint8 images, int64 labels)`` of one split on ``device``, cached: runs trained together in one
    process (``train_together``) share one copy of each split."""
    device = torch.device(device or "cpu")
    key = (name, split, str(data_dir), val_size, str(device))
    if key not in _cache:
        if name == SYNTHETIC:
            if split == "test":
                images, labels = _synthetic("test")
            else:
                images, labels = _synthetic("train")
                size = SYNTHETIC_INFO.val_size if val_size is None else val_size
                train, val = _holdout(len(images), size)
                keep = train if split == "train" else val
                images, labels = images[keep], labels[keep]
        else:
            images, labels = load_split(name, split, data_dir=data_dir, download=download, val_size=val_size)
        _cache[key] = (images.to(device), labels.to(device))
    return _cache[key]


def clear_cache() -> None:
    _cache.clear()
