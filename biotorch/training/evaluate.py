"""Loss, top-1 and top-5 of a model on a split (``biotorch eval`` is in :mod:`biotorch.cli`).

Example::

    >>> evaluate(model, DeviceLoader(images, labels, 1000, info.mean, info.std, train=False), 10)["top1"]
"""
from __future__ import annotations

import contextlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, *, autocast: Optional[Callable] = None,
             all_sum: Optional[Callable[[Tensor], Tensor]] = None, per_class: bool = False) -> dict:
    """Loss, top-1 and top-5 (%) of ``model`` over ``loader``; sums stay on the device until the end.

    ``all_sum`` adds the sums across DDP ranks (each rank evaluating its share of the split).
    """
    was_training = model.training
    model.eval()
    device = loader.device
    k = min(5, num_classes)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top1, top5, count
    class_total = torch.zeros(num_classes, dtype=torch.int64, device=device)
    class_correct = torch.zeros(num_classes, dtype=torch.int64, device=device)
    for x, y in loader:
        with (autocast or contextlib.nullcontext)():
            logits = model(x)
        hits = logits.topk(k, dim=1).indices == y[:, None]
        sums += torch.stack([F.cross_entropy(logits.float(), y, reduction="sum").double(),
                             hits[:, 0].sum().double(), hits.any(1).sum().double(),
                             torch.tensor(len(y), dtype=torch.float64, device=device)])
        if per_class:
            one_hot = F.one_hot(y, num_classes)
            class_total += one_hot.sum(0)
            class_correct += (one_hot * hits[:, :1]).sum(0)
    if all_sum is not None:
        sums = all_sum(sums)
        if per_class:
            class_total, class_correct = all_sum(class_total), all_sum(class_correct)
    model.train(was_training)
    loss, top1, top5, count = sums.tolist()
    count = max(count, 1)
    result = {"loss": loss / count, "top1": 100 * top1 / count, "top5": 100 * top5 / count, "images": int(count)}
    if per_class:
        result["per_class"] = [{"images": int(t), "top1": 100 * c / t if t else float("nan")}
                               for t, c in zip(class_total.tolist(), class_correct.tolist())]
    return result
