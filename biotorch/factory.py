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

import dataclasses
import functools
from os import PathLike
from pathlib import Path
from typing import Any, Optional, Union

import timm
import torch
from torch import nn
from torchvision.transforms import v2

from . import data
from .metrics import count_parameters
from .hub import DATA_FIELDS
from .registry import fit_channels, get_pretrained_cfg, list_models, split_name, timm_cfg
from .weights import Source, fetch, kind, resolve

__all__ = ["create_model", "data_config", "model_parameters", "transforms"]


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


def data_config(source) -> dict:
    """The data cfg (timm's ``pretrained_cfg`` dict: ``input_size``, ``mean``, ``std``, ``interpolation``,
    ``crop_pct``, ``label_names``, and ``recipe`` where one is known) of a pretrained name, a checkpoint folder,
    ``hf-hub:<org>/<repo>``, a model (its ``pretrained_cfg``; a published tag's recipe) or a cfg: what
    :func:`transforms` and fine-tuning on an image folder bring images to.

    Example::

        >>> data_config("lenet_fa.fashion_mnist")["input_size"]
        (1, 32, 32)
    """
    if isinstance(source, nn.Module):
        cfg = dict(getattr(source, "pretrained_cfg", None) or {})
        if not cfg:
            raise ValueError("this model carries no pretrained_cfg (build it with biotorch.create_model or "
                             "timm.create_model)")
        name = f"{cfg.get('architecture')}.{cfg.get('tag')}"
        if cfg.get("tag") and name in list_models(pretrained=True):
            cfg["recipe"] = get_pretrained_cfg(name).recipe
        return cfg
    if not isinstance(source, (str, PathLike, Source)):  # timm's cfg, a CheckpointRecord
        return source if isinstance(source, dict) else dataclasses.asdict(source)
    if kind(source) == "name":
        record = dataclasses.asdict(get_pretrained_cfg(resolve(source).name))
        return {**record, "crop_pct": data.DATASETS[record["dataset"]].crop_pct}
    config = fetch(source, require_model=True).config
    record = config.get("pretrained_cfg") or {}
    if record.get("dataset") in data.DATASETS:  # a published card's record
        return {**record, "input_size": tuple(config["input_size"]),
                "crop_pct": data.DATASETS[record["dataset"]].crop_pct}
    cfg = {**timm_cfg(f"{config['arch']}_{config['rule']}").to_dict(),  # the architecture's, then the folder's
           **{k: tuple(record[k]) if isinstance(record[k], list) else record[k]
              for k in DATA_FIELDS if record.get(k) is not None},
           "num_classes": config.get("num_classes"), "recipe": record.get("recipe")}
    fit_channels(cfg, config["input_size"][0])  # the architecture's normalisation, for the folder's channels
    cfg["input_size"] = tuple(config["input_size"])
    return cfg


def transforms(source, training: bool = False) -> v2.Compose:
    """The transform (PIL image or uint8 tensor of any size → normalised tensor the model takes) of a pretrained
    name (``"lenet_fa.fashion_mnist"``), a checkpoint folder, ``hf-hub:<org>/<repo>`` or a model (its
    ``pretrained_cfg``): timm's ``crop_pct`` semantics (resize to size / crop_pct, centre-crop), channels
    converted to the model's (:func:`data_config`). With ``training``: the augmentation of the checkpoint's recipe
    (for a model, of its published tag's; none where no recipe is known).

    Example::

        >>> tf = biotorch.transforms("lenet_fa.fashion_mnist")
        >>> tf_train = biotorch.transforms("out/lenet_fa-finetuned", training=True)
    """
    return data.transforms(data_config(source), training)
