"""The optimizer and the learning-rate schedule of a recipe, as plain functions (timm's ``create_optimizer_v2``
and ``create_scheduler_v2``).

Example::

    >>> optimizer = create_optimizer(model, recipe, torch.device("cpu"))
    >>> scheduler = create_scheduler(optimizer, recipe, steps_per_epoch=len(loader))  # stepped every batch
"""
from __future__ import annotations

import math
from typing import Callable, Collection

import torch
from torch import nn

from .recipe import Recipe

__all__ = ["create_optimizer", "create_scheduler", "lr_factor"]


def create_optimizer(model: nn.Module, recipe: Recipe, device: torch.device,
                     head: Collection[int] = ()) -> torch.optim.Optimizer:
    """The recipe's optimizer over ``model.parameters()`` (kp's learned feedback included). With a
    ``backbone_lr_scale``, the parameters whose ``id`` is in ``head`` form the last group, at the full lr."""
    params = list(model.parameters())
    groups = [(params, 1.0)]  # one group unless the backbone learns at another lr (the head's is last)
    if recipe.backbone_lr_scale != 1:
        groups = [([p for p in params if id(p) not in head], recipe.backbone_lr_scale),
                  ([p for p in params if id(p) in head], 1.0)]
    # A CUDA graph reads lr from device memory, so the schedule can change it between replays; the
    # fused CUDA optimizers take such a tensor lr without a host sync (foreach would call .item()).
    # The schedule computes floats from initial_lr: no device reads per step.
    groups = [{"params": group, "lr": torch.tensor(recipe.lr * scale, device=device) if recipe.cuda_graph
               else recipe.lr * scale, "initial_lr": recipe.lr * scale} for group, scale in groups]
    fused = True if device.type == "cuda" else None
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=recipe.momentum, nesterov=recipe.nesterov,
                               weight_decay=recipe.weight_decay, fused=fused)
    cls = torch.optim.Adam if recipe.optimizer == "adam" else torch.optim.AdamW
    return cls(groups, betas=tuple(recipe.betas), weight_decay=recipe.weight_decay, capturable=recipe.cuda_graph,
               fused=fused)


def create_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe,
                     steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The recipe's schedule, stepped after every optimizer step (:func:`lr_factor`)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(recipe, steps_per_epoch))


def lr_factor(recipe: Recipe, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base lr at optimizer step ``s`` (0-based); schedules are stepped every batch."""
    total = max(1, recipe.epochs * steps_per_epoch)
    warmup = int(recipe.warmup_epochs * steps_per_epoch)
    milestones = sorted(m * steps_per_epoch for m in recipe.milestones)

    def factor(step: int) -> float:
        if recipe.schedule == "onecycle":  # triangle: 1/25 → 1 over the rise, then down to 0
            rise = warmup or max(1, int(0.3 * total))
            if step < rise:
                return 1 / 25 + (1 - 1 / 25) * step / rise
            return max(0.0, (total - step) / max(1, total - rise))
        scale = (step + 1) / warmup if step < warmup else 1.0
        if recipe.schedule == "cosine":
            t = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
            return scale * 0.5 * (1 + math.cos(math.pi * t))
        if recipe.schedule == "step":
            return scale * recipe.gamma ** sum(step >= m for m in milestones)
        return scale

    return factor
