"""The builder: ``create_model``, ``from_pretrained``, ``transforms`` and the timm entry points.

A model is an architecture (``biotorch.models``) converted to a learning rule (``biotorch.convert``),
optionally with published weights (``biotorch.hub``) described by the registry (``biotorch.registry``).

Every name is a timm model, built one way: ``timm.create_model`` calls the name's entry point, which builds
through timm's ``build_model_with_cfg`` (the ``pretrained_cfg`` every instance carries, timm's factory
arguments, the ``features_only`` wrappers) around :func:`_model` (architecture × rule, weights loaded by
biotorch's own loader: mirror, then Hub, sha256 checked). ``biotorch.create_model`` is ``timm.create_model``
with biotorch's name checks and its registry as the source of pretrained cfgs.

Example::

    >>> model = biotorch.create_model("resnet20_dfa", num_classes=100)
    >>> model.reset_classifier(5)                    # new head learns with dfa; feedback redrawn for 5
    >>> model = timm.create_model("lenet_fa.fashion_mnist", pretrained=True, features_only=True)
    >>> model = biotorch.from_pretrained("hf-hub:biotorch/lenet_fa.fashion_mnist")
    >>> tf = biotorch.transforms("lenet_fa.fashion_mnist")
"""
from __future__ import annotations

import functools
import json
import sys
import types
from pathlib import Path
from typing import Any, NamedTuple, Optional, Union

import timm
import torch
from timm.layers import register_notrace_module
from timm.models import build_model_with_cfg, register_model, resolve_pretrained_cfg
from torch import nn
from torchvision.transforms import v2

from . import data
from .convert import convert, convert_layer, redraw_feedback
from .hub import CONFIG_NAME, WEIGHTS_NAME, PathLike, download_repo, load_checkpoint, load_weights
from .metrics import count_parameters
from .models import ARCHITECTURES, DEFAULT_CFGS
from .nn import LAYERS
from .registry import PretrainedCfg, describe, get_pretrained_cfg, model_names, split_name, timm_cfg, timm_default_cfgs
from .rules import DFA, RULES

__all__ = ["create_model", "from_pretrained", "model_parameters", "register_with_timm", "transforms"]

# timm's factory arguments every name takes (timm drops those given as None), then biotorch's own. Options of
# a learning rule go to the rule, which refuses another rule's with a ValueError; anything else is a
# TypeError, as in timm.
TIMM_ARGUMENTS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "num_classes", "in_chans",
                  "img_size", "global_pool", "drop_rate", "features_only", "out_indices", "feature_cls", "device",
                  "dtype")
BIOTORCH_ARGUMENTS = ("seed", "checkpoint")
RULE_OPTIONS = tuple(dict.fromkeys(option for rule in RULES.values() for option in rule.options))


class _Weights(NamedTuple):
    """Where the weights of a build come from: a published ``record`` or a ``path``, and its classes."""

    record: Optional[PretrainedCfg]
    path: Optional[PathLike]
    num_classes: Optional[int]  # of the checkpoint's head; None: whatever the model is built with


def _weights(model_name: str, cfg, checkpoint: Optional[PathLike]) -> _Weights:
    if checkpoint is not None:
        return _Weights(None, checkpoint, None)
    if cfg.file:  # timm's pretrained_cfg_overlay=dict(file=...): a local file of this model's weights
        return _Weights(None, cfg.file, cfg.num_classes)
    record = get_pretrained_cfg(f"{model_name}.{cfg.tag}" if cfg.tag else model_name)
    if cfg.hf_hub_id != record.hub_id or cfg.url or cfg.state_dict:
        raise ValueError(f"{model_name}: biotorch loads the weights it publishes ({record.hub_id}), checked "
                         "against their sha256; for other weights pass checkpoint=PATH, "
                         "pretrained_cfg_overlay=dict(file=PATH) or use biotorch.from_pretrained('hf-hub:...')")
    return _Weights(record, None, record.num_classes)


def _model(model_name: str, rule_options: dict, weights: Optional[_Weights], cache_dir: Optional[PathLike], *,
           num_classes: int, in_chans: int, img_size: Optional[tuple[int, int]] = None,
           global_pool: Optional[str] = None, drop_rate: float = 0.0, device: Union[str, torch.device, None] = None,
           dtype: Optional[torch.dtype] = None, seed: int = 0) -> nn.Module:
    """Architecture × rule, with its weights: what timm's ``build_model_with_cfg`` instantiates.

    Weights are loaded strictly into the head they were trained with (on ``device``, before any ``dtype``
    cast, so the feedback fingerprint is checked as saved); a different ``num_classes`` or any
    ``global_pool`` then gets a new head, which learns with the model's rule. ``img_size`` reaches the
    architectures that take one (mlp, mixer) when it is not their default.
    """
    arch, rule, _ = split_name(model_name)
    trained_classes = weights.num_classes if weights is not None and weights.num_classes is not None else num_classes
    size = (img_size, img_size) if isinstance(img_size, int) else img_size
    given = dict(global_pool=None if weights is not None else global_pool,
                 img_size=None if size is None or tuple(size) == DEFAULT_CFGS[arch]["input_size"][1:] else tuple(size))
    model = ARCHITECTURES[arch](num_classes=trained_classes, in_chans=in_chans, drop_rate=drop_rate,
                                **{k: v for k, v in given.items() if v is not None})
    convert(model, rule, seed=seed, **rule_options)
    model.biotorch_config = dict(arch=arch, rule=rule, rule_options=dict(rule_options), num_classes=trained_classes,
                                 in_chans=in_chans, seed=seed, input_size=list(model.default_input_size))
    model.reset_classifier = types.MethodType(reset_classifier, model)
    if device is not None:
        model.to(device)
    _draw_direct_feedback(model)
    if weights is not None:
        load_weights(model, weights.record, weights.path, cache_dir=cache_dir)
        if num_classes != trained_classes or global_pool is not None:
            print(f"biotorch: {model_name} was trained with {trained_classes} classes; the head is re-initialised "
                  f"for num_classes={num_classes}" + (f", global_pool={global_pool!r}" if global_pool is not None
                                                      else ""), file=sys.stderr)
            model.reset_classifier(num_classes, global_pool)
    if dtype is not None:
        model.to(dtype)
    return model


@torch.no_grad()
def _draw_direct_feedback(model: nn.Module) -> None:
    # dfa feedback is shaped by each layer's input: one dry forward draws it, so it is in the state_dict
    # (and identical on every DDP rank) before training starts.
    if any(isinstance(getattr(m, "rule", None), DFA) for m in model.modules()):
        was_training = model.training
        param = next(model.parameters())
        model.eval()(torch.zeros(1, *model.default_input_size, device=param.device, dtype=param.dtype))
        model.train(was_training)


def reset_classifier(model: nn.Module, num_classes: int, global_pool: Optional[str] = None) -> None:
    """timm's ``reset_classifier``; the new head learns with the model's rule (dfa feedback is redrawn)."""
    config = model.biotorch_config
    type(model).reset_classifier(model, num_classes, global_pool)
    head = model.get_classifier()
    if type(head) in LAYERS:
        name = next(n for n, m in model.named_modules() if m is head)
        convert_layer(model, name, config["rule"], config["seed"] * 10007 + 9999, **config["rule_options"])
    config["num_classes"] = num_classes
    redraw_feedback(model)  # no-op unless some layer learns by direct feedback
    _draw_direct_feedback(model)


def _build(model_name: str, pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None,
           cache_dir: Optional[PathLike] = None, checkpoint: Optional[PathLike] = None, **kwargs) -> nn.Module:
    """One model through timm's ``build_model_with_cfg``: ``pretrained_cfg`` resolved as timm does (a tag, a
    dict or ``PretrainedCfg``, an overlay), features wrapped by timm's feature classes."""
    arch, rule, _ = split_name(model_name)
    rule_options = {k: kwargs.pop(k) for k in RULE_OPTIONS if k in kwargs}
    if kwargs.get("features_only") and not DEFAULT_CFGS[arch]["feature_maps"]:
        cnns = ", ".join(a for a, c in DEFAULT_CFGS.items() if c["feature_maps"])
        raise ValueError(f"{model_name}: features_only needs spatial feature maps, and {arch} has none; "
                         f"the architectures with feature maps (feature_info) are {cnns}")
    if pretrained and not pretrained_cfg and checkpoint is None and not (pretrained_cfg_overlay or {}).get("file"):
        pretrained_cfg = timm_cfg(model_name, get_pretrained_cfg(model_name))  # no tag: biotorch's default tag
    cfg = resolve_pretrained_cfg(model_name, pretrained_cfg, pretrained_cfg_overlay)
    weights = _weights(model_name, cfg, checkpoint) if pretrained or checkpoint is not None else None
    build = functools.partial(_model, model_name, rule_options, weights, cache_dir)
    return build_model_with_cfg(build, model_name, pretrained=False, pretrained_cfg=cfg,
                                feature_cfg=dict(out_indices=tuple(range(DEFAULT_CFGS[arch]["feature_maps"]))),
                                **kwargs)


def _entrypoint(model_name: str):
    _, rule, _ = split_name(model_name)

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        unknown = sorted(set(kwargs) - {*TIMM_ARGUMENTS, *BIOTORCH_ARGUMENTS, *RULE_OPTIONS})
        if unknown:
            raise TypeError(f"{model_name} got unexpected argument(s) {', '.join(unknown)}; it takes "
                            f"{', '.join((*TIMM_ARGUMENTS, *BIOTORCH_ARGUMENTS))} and the options of its rule "
                            f"{rule}: {', '.join(RULES[rule].options) or 'none'}")
        return _build(model_name, pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = model_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = describe(model_name)
    return entrypoint


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
        in_chans: input channels.
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


def from_pretrained(name_or_path: PathLike, device=None, revision: Optional[str] = None,
                    local_files_only: bool = False, num_classes: Optional[int] = None) -> nn.Module:
    """A model with weights, from a checkpoint folder, ``hf-hub:<org>/<repo>``, or a registered name.

    Example::

        >>> model = biotorch.from_pretrained("lenet_fa.fashion_mnist", device="cpu")
    """
    text = str(name_or_path)
    if text.startswith("hf-hub:"):
        folder = download_repo(text[len("hf-hub:"):], revision, local_files_only)
    elif Path(text).is_dir():
        folder = Path(text)
    else:  # a registered name: its published weights (mirror, then Hub at ``revision``)
        cfg = get_pretrained_cfg(text)
        model = create_model(cfg.name, device=device)
        load_weights(model, cfg, revision=revision, local_files_only=local_files_only)
        if num_classes is not None and num_classes != cfg.num_classes:
            model.reset_classifier(num_classes)
        return model
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: not a biotorch checkpoint folder")
    try:
        config = json.loads(config_path.read_text())
        name = f"{config['arch']}_{config['rule']}"
        build = dict(num_classes=config["num_classes"], in_chans=config["in_chans"], seed=config.get("seed", 0),
                     **config.get("rule_options", {}))
        if config.get("pretrained_cfg"):  # a published checkpoint: its data, classes and Hub repo
            build["pretrained_cfg"] = timm_cfg(name, PretrainedCfg.from_dict(config["pretrained_cfg"]))
        else:  # the architecture's cfg, for the checkpoint's classes and channels
            input_size = (config["in_chans"], *timm_cfg(name).input_size[1:])
            build["pretrained_cfg_overlay"] = dict(num_classes=config["num_classes"], input_size=input_size)
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_path} is not a valid biotorch config: {error!r}") from None
    model = create_model(name, device=device, **build)
    expected = config.get("files", {}).get(WEIGHTS_NAME, {}).get("sha256")
    load_checkpoint(model, folder / WEIGHTS_NAME, expected)
    if num_classes is not None and num_classes != config["num_classes"]:
        model.reset_classifier(num_classes)
    return model


def transforms(name_or_model) -> v2.Compose:
    """The eval transform (PIL image or uint8 tensor → normalised tensor) of a pretrained checkpoint, such as
    ``"lenet_fa.fashion_mnist"``, or of a model (its ``pretrained_cfg``).

    Example::

        >>> tf = biotorch.transforms("lenet_fa.fashion_mnist")
    """
    if isinstance(name_or_model, str):
        return data.transforms(get_pretrained_cfg(name_or_model))
    return data.transforms(name_or_model)


# --- timm: every name a registered model ---------------------------------------------------------------------
default_cfgs: dict = {}  # timm's register_model reads each name's DefaultCfg from its module's default_cfgs


def register_with_timm() -> None:
    """Register every name with timm (entry point and ``DefaultCfg``: ``timm.list_models``,
    ``timm.list_pretrained``, ``timm.create_model``) and the rule layers as fx leaf modules (timm's feature
    extraction keeps them whole). ``import biotorch`` does it."""
    if default_cfgs:
        return
    default_cfgs.update(timm_default_cfgs())
    for name in model_names():
        globals()[name] = register_model(_entrypoint(name))  # timm lists it in this module's __all__
    for layer in set(LAYERS.values()):
        register_notrace_module(layer)
