"""Building models: ``create_model`` (any registered name, optionally with its published weights) and
``transforms`` (the eval transform of a checkpoint or model).

Every name is a timm model (:mod:`biotorch.entrypoints`): ``biotorch.create_model`` is ``timm.create_model``
with biotorch's name checks and its registry as the source of pretrained cfgs; what each entry point builds is
:mod:`biotorch.builder`'s. Models from checkpoints are :mod:`biotorch.pretrained`'s.

Example::

    >>> model = biotorch.create_model("resnet20_dfa", num_classes=100)
    >>> model.reset_classifier(5)                    # new head learns with dfa; feedback redrawn for 5
    >>> model = timm.create_model("lenet_fa.fashion_mnist", pretrained=True, features_only=True)
    >>> tf = biotorch.transforms("lenet_fa.fashion_mnist")
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
from torch import nn
from torchvision.transforms import v2

from . import data
from .metrics import count_parameters
from .registry import get_pretrained_cfg, split_name, timm_cfg

__all__ = ["create_model", "model_parameters", "transforms"]


def create_model(name: str, pretrained: bool = False, num_classes: Optional[int] = None,
                 in_chans: Optional[int] = None, device: Union[str, torch.device, None] = None, seed: int = 0,
                 checkpoint: Union[str, Path, None] = None, **kwargs: Any) -> nn.Module:
    """Build ``arch_rule`` (or ``arch_rule.tag``), optionally with its pretrained weights.

    The same model as ``timm.create_model(name, ...)``, with friendlier errors for unknown names and tags.

    Args:
        name: e.g. ``"resnet20_fa"`` or ``"resnet20_fa.fashion_mnist"`` (a tag sets num_classes/in_chans
            from the checkpoint's metadata even without weights).
        pretrained: load the tag's published weights (the default tag when none is named; local folder →
            clone's ``model_cards/`` → Hub).
        num_classes: a value different from the checkpoint's drops and re-initialises the head (and
            redraws dfa feedback), with a warning; 0 for no head.
        in_chans: input channels; with ``pretrained``, a value different from the checkpoint's adapts the first
            convolution as timm does (:func:`init_from`).
        device: where the model lives (weights are loaded straight there).
        seed: seed of the feedback matrices (ignored when loading weights, which carry their feedback).
        checkpoint: a local folder or ``.safetensors`` file to load instead of the published weights.
        **kwargs: timm's factory arguments (``global_pool``, ``drop_rate``, ``features_only``,
            ``out_indices``, ``pretrained_cfg_overlay``, ``dtype``, ...) and the options of the rule, e.g.
            ``mirror_lr`` for wm.
    """
    arch, rule, tag = split_name(name)
    model_name = f"{arch}_{rule}"
    if tag:  # biotorch's registry, not timm's copy of it: its errors name the tags there are
        kwargs.setdefault("pretrained_cfg", timm_cfg(model_name, get_pretrained_cfg(name)))
    return timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans,
                             device=device, seed=seed, checkpoint=checkpoint, **kwargs)


@functools.lru_cache(maxsize=None)
def model_parameters(name: str) -> tuple[int, int]:
    """Parameter counts of a registered model at its defaults, computed on the meta device (instant)."""
    with torch.device("meta"):
        return count_parameters(create_model(name))


def transforms(name_or_model) -> v2.Compose:
    """The eval transform (PIL image or uint8 tensor → normalised tensor) of a pretrained checkpoint, such as
    ``"lenet_fa.fashion_mnist"``, or of a model (its ``pretrained_cfg``).

    Example::

        >>> tf = biotorch.transforms("lenet_fa.fashion_mnist")
    """
    if isinstance(name_or_model, str):
        return data.transforms(get_pretrained_cfg(name_or_model))
    return data.transforms(name_or_model)
