"""Architecture × rule, with its weights: what every timm entry point of biotorch builds.

timm's ``build_model_with_cfg`` instantiates the model (``pretrained_cfg``, timm's factory arguments, the
``features_only`` wrappers) around :func:`_instantiate`, which converts the architecture (``biotorch.models``) to
its rule (``biotorch.convert``) and loads the weights :mod:`biotorch.weights` fetched. As timm's
``load_pretrained`` does, a checkpoint trained on other channels or classes is adapted on its state dict,
from the architecture's ``first_conv`` and ``classifier`` (:func:`merge_state`).
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from typing import NamedTuple, Optional, Union

import torch
from timm.models import adapt_input_conv, build_model_with_cfg, resolve_pretrained_cfg
from torch import nn

from .convert import convert, draw_feedback
from .errors import CheckpointError
from .hub import DATA_FIELDS, PathLike, load_checkpoint
from .models import ARCHITECTURES, DEFAULT_CFGS
from .registry import fit_channels, get_pretrained_cfg, split_name, timm_cfg
from .rules import RULES
from .weights import Fetched, Source, fetch, folder_source

__all__ = ["build_model", "merge_state", "rule_options"]


def rule_options() -> tuple[str, ...]:
    """The options of every learning rule (registered ones too): a model's factory takes them and hands them to its
    rule, which refuses another rule's."""
    return tuple(dict.fromkeys(option for rule in RULES.values() for option in rule.options))


class _Pretrained(NamedTuple):
    """The weights a build starts from (:func:`biotorch.weights.fetch`) and what they were trained with; ``None``:
    not recorded (whatever the model is built with)."""

    found: Fetched
    num_classes: Optional[int]
    in_chans: Optional[int]
    seed: Optional[int]


def _find_pretrained(model_name: str, cfg, checkpoint: Optional[PathLike],
                     cache_dir: Optional[PathLike]) -> _Pretrained:
    if checkpoint is not None or cfg.file:  # a local folder or file (timm's pretrained_cfg_overlay=dict(file=...))
        found = fetch(folder_source(checkpoint if checkpoint is not None else cfg.file), require_model=False,
                      config_required=False)
        classes = found.config.get("num_classes", cfg.num_classes if checkpoint is None else None)
        return _Pretrained(found, classes, found.config.get("in_chans"), found.config.get("seed"))
    record = get_pretrained_cfg(f"{model_name}.{cfg.tag}" if cfg.tag else model_name)
    if cfg.hf_hub_id != record.hub_id or cfg.url or cfg.state_dict:
        raise ValueError(f"{model_name}: biotorch loads the weights it publishes ({record.hub_id}), checked "
                         "against their sha256; for other weights pass checkpoint=PATH, "
                         "pretrained_cfg_overlay=dict(file=PATH) or use biotorch.from_pretrained('hf-hub:...')")
    found = fetch(Source("name", record.name, name=record.name), cache_dir=cache_dir)
    return _Pretrained(found, record.num_classes, record.input_size[0], record.seed)


def _pool_type(model: nn.Module) -> str:
    return getattr(getattr(model, "global_pool", None), "pool_type", "")


def _instantiate(model_name: str, rule_options: dict, weights: Optional[_Pretrained], *, num_classes: int,
                 in_chans: int, img_size: Optional[tuple[int, int]] = None, global_pool: Optional[str] = None,
                 drop_rate: float = 0.0, device: Union[str, torch.device, None] = None,
                 dtype: Optional[torch.dtype] = None, seed: int = 0) -> nn.Module:
    """Architecture × rule, with its weights: what timm's ``build_model_with_cfg`` instantiates.

    Weights are loaded strictly into the head they were trained with (on ``device``, before any ``dtype``
    cast, so the feedback fingerprint is checked as saved); a different ``num_classes`` or any
    ``global_pool`` then gets a new head, which learns with the model's rule; other input channels adapt the
    first convolution (timm's ``adapt_input_conv``). ``img_size`` reaches the architectures that take one (mlp,
    mixer) when it is not their default.
    """
    arch, rule, _ = split_name(model_name)
    _check_arguments(model_name, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate, seed=seed)
    trained_classes = weights.num_classes if weights is not None and weights.num_classes is not None else num_classes
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    given = dict(global_pool=None if weights is not None else global_pool,
                 img_size=None if size is None or tuple(size) == DEFAULT_CFGS[arch]["input_size"][1:] else tuple(size))
    if given["img_size"] is not None and not DEFAULT_CFGS[arch]["img_size"]:
        height, width = DEFAULT_CFGS[arch]["input_size"][1:]
        fixed = f"images of {height}x{width}" if DEFAULT_CFGS[arch]["fixed_input_size"] else "images of any size"
        raise TypeError(f"{model_name} takes no img_size (it takes {fixed}); img_size is for "
                        f"{', '.join(a for a, c in DEFAULT_CFGS.items() if c['img_size'])}")
    if weights is not None and torch.device(device or "cpu").type == "meta":
        raise ValueError(f"{model_name}: weights cannot be loaded onto the meta device; build it there without "
                         "pretrained=True or checkpoint=")
    model = ARCHITECTURES[arch](num_classes=trained_classes, in_chans=in_chans, drop_rate=drop_rate,
                                **{k: v for k, v in given.items() if v is not None})
    convert(model, rule, seed=seed, **rule_options)  # its config: rule, seed, rule_options
    model.biotorch_config = dict(arch=arch, **model.biotorch_config, num_classes=trained_classes, in_chans=in_chans,
                                 input_size=list(model.default_input_size))
    if device is not None:
        model.to(device)
    draw_feedback(model)
    if weights is not None and weights.in_chans not in (None, in_chans):
        # as trained, loaded and checked; then its state dict adapted to these channels
        trained = _instantiate(model_name, rule_options, weights, num_classes=trained_classes,
                               in_chans=weights.in_chans, img_size=img_size, drop_rate=drop_rate, device=device,
                               seed=seed)
        state = model.state_dict()
        adapted = merge_state(state, trained.state_dict(), first_conv=DEFAULT_CFGS[arch]["first_conv"],
                              what=f"{weights.found.source.text}: the checkpoint does not fit {model_name} with "
                                   f"in_chans={in_chans}")
        model.load_state_dict(state, strict=True)  # re-derives seeded feedback for the new shapes
        print(f"biotorch: {weights.found.source.name or weights.found.source.path} was trained on "
              f"{weights.in_chans}-channel images; {', '.join(adapted)} adapted to {in_chans} "
              "(timm's adapt_input_conv)", file=sys.stderr)
    elif weights is not None:
        load_checkpoint(model, weights.found.file, weights.found.sha256)
    if weights is not None:
        if weights.seed is not None:  # its feedback came from its own seed, and so will a new head's
            model.biotorch_config["seed"] = weights.seed
        if num_classes != trained_classes or global_pool not in (None, _pool_type(model)):
            print(f"biotorch: {model_name} was trained with {trained_classes} classes; the head is re-initialised "
                  f"for num_classes={num_classes}" + (f", global_pool={global_pool!r}" if global_pool is not None
                                                      else ""), file=sys.stderr)
            model.reset_classifier(num_classes, global_pool)
    if dtype is not None:
        model.to(dtype)
    return model


def _check_arguments(model_name: str, *, num_classes, in_chans, drop_rate, seed) -> None:
    """timm's factory arguments, checked before anything is built (a bad value named, not a ZeroDivisionError
    deep in an initialiser or a NaN dropout that builds)."""
    integers = {"num_classes": (num_classes, 0), "in_chans": (in_chans, 1), "seed": (seed, 0)}
    for key, (value, lowest) in integers.items():
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value < 2 ** 32:
            raise ValueError(f"{model_name}: {key} must be an integer in [{lowest}, 2**32), got {value!r}")
    if isinstance(drop_rate, bool) or not isinstance(drop_rate, (int, float)) or not 0 <= drop_rate < 1:
        raise ValueError(f"{model_name}: drop_rate must be a number in [0, 1), got {drop_rate!r}")


def merge_state(state: dict, taken: dict, *, first_conv: Optional[str], head: Optional[str] = None,
                take_head: bool = True, take_feedback: bool = True, what: str) -> list[str]:
    """timm's ``load_pretrained`` on state dicts: ``state`` (a model's, changed in place) takes ``taken``'s tensors,
    but keeps its own head (the keys under ``head``) unless ``take_head`` and its own feedback state
    (``feedback_*``) unless ``take_feedback``. Tensors of the first convolution (under ``first_conv``) shaped by
    other input channels are adapted by timm's ``adapt_input_conv``; anything else that does not fit raises a
    :class:`CheckpointError` that starts with ``what``. Returns the adapted keys."""
    def own(key: str) -> bool:
        return ((not take_head and head is not None and key.startswith(head + "."))
                or (not take_feedback and key.rpartition(".")[2].startswith("feedback_")))

    adapted, misfits = [], []
    for key in [k for k in state if not own(k)]:
        value, target = taken.get(key), state[key]
        if value is None:
            misfits.append(f"{key} missing")
            continue
        if value.shape != target.shape:
            if (first_conv is not None and key.startswith(first_conv + ".") and value.ndim == target.ndim == 4
                    and (value.shape[0], *value.shape[2:]) == (target.shape[0], *target.shape[2:])):
                value = _adapt_input_conv(value, target.shape[1], value.shape[1])
                adapted.append(key)
            else:
                misfits.append(f"{key} {tuple(value.shape)} vs {tuple(target.shape)}")
        state[key] = value
    misfits += [f"{key} unexpected" for key in taken if key not in state and not own(key)]
    if misfits:
        raise CheckpointError(f"{what}: {'; '.join(misfits[:5])}{' …' if len(misfits) > 5 else ''}")
    return adapted


def _adapt_input_conv(weight: torch.Tensor, in_chans: int, base_chans: int) -> torch.Tensor:
    try:
        return adapt_input_conv(in_chans, weight, base_chans=base_chans)
    except TypeError:  # before timm 1.0.31 the helper assumed 3-channel checkpoints
        raise ValueError(f"adapting a {base_chans}-channel first layer to {in_chans} channels needs timm>=1.0.31 "
                         "(adapt_input_conv's base_chans)") from None


def build_model(model_name: str, pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
                cache_dir: Optional[PathLike] = None, checkpoint: Optional[PathLike] = None, **kwargs) -> nn.Module:
    """One model through timm's ``build_model_with_cfg``: ``pretrained_cfg`` resolved as timm does (a tag, a
    dict or timm's ``PretrainedCfg``, an overlay), features wrapped by timm's feature classes."""
    arch, rule, _ = split_name(model_name)
    options = {k: kwargs.pop(k) for k in rule_options() if k in kwargs}
    if kwargs.get("features_only") and not DEFAULT_CFGS[arch]["feature_maps"]:
        cnns = ", ".join(a for a, c in DEFAULT_CFGS.items() if c["feature_maps"])
        raise ValueError(f"{model_name}: features_only needs spatial feature maps, and {arch} has none; "
                         f"the architectures with feature maps (feature_info) are {cnns}")
    if pretrained and not pretrained_cfg and checkpoint is None and not (pretrained_cfg_overlay or {}).get("file"):
        pretrained_cfg = timm_cfg(model_name, get_pretrained_cfg(model_name))  # no tag: biotorch's default tag
    cfg = resolve_pretrained_cfg(model_name, pretrained_cfg, pretrained_cfg_overlay)
    weights = _find_pretrained(model_name, cfg, checkpoint, cache_dir) if pretrained or checkpoint is not None \
        else None
    if checkpoint is not None:  # the folder as saved: its classes, channels and data unless others are asked for
        for key, value in (("num_classes", weights.num_classes), ("in_chans", weights.in_chans)):
            if kwargs.get(key) is None and value is not None:
                kwargs[key] = value
        record = weights.found.config.get("pretrained_cfg") or {}
        data = {k: tuple(v) if isinstance(v, list) else v for k, v in record.items() if k in DATA_FIELDS and v}
        cfg = dataclasses.replace(cfg, **data, num_classes=weights.num_classes or cfg.num_classes)
    if weights is not None:  # the rule options the weights were trained with, unless others are asked for
        found = weights.found
        saved = found.config.get("rule_options") if found.config.get("rule") == rule else None
        saved = saved if saved is not None else (found.record.rule_options if found.record is not None
                                                 and found.record.rule == rule else {})
        options = {**saved, **options}
    build = functools.partial(_instantiate, model_name, options, weights)
    model = build_model_with_cfg(build, model_name, pretrained=False, pretrained_cfg=cfg,
                                 feature_cfg=dict(out_indices=tuple(range(DEFAULT_CFGS[arch]["feature_maps"]))),
                                 **kwargs)
    fit_channels(model.pretrained_cfg, kwargs.get("in_chans", cfg.input_size[0]))
    return model
