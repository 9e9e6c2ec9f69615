"""The trainer's view of data: whole splits resident on the training device, shared by the runs of a process.

Example::

    >>> images, labels = load("synthetic", "train", device="cuda")
    >>> images.shape
    torch.Size([768, 1, 32, 32])
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..data import DatasetInfo, load_split

_cache: dict[tuple, tuple[Tensor, Tensor]] = {}


def load(name: str, split: str, data_dir=None, *, download: bool = False, val_size: Optional[int] = None,
         info: Optional[DatasetInfo] = None, device=None) -> tuple[Tensor, Tensor]:
    """``(uint8 images, int64 labels)`` of one split on ``device``, cached: runs trained together in one
    process (``train_together``) share one copy of each split. ``info``: what an image folder's images are brought
    to (:func:`biotorch.data.load_split`)."""
    device = torch.device(device or "cpu")
    key = (name, split, str(data_dir), val_size, info, str(device))
    if key not in _cache:
        images, labels = load_split(name, split, data_dir=data_dir, download=download, val_size=val_size, info=info)
        _cache[key] = (images.to(device), labels.to(device))
    return _cache[key]


def clear_cache() -> None:
    _cache.clear()
