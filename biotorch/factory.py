"""The builder: ``create_model``, ``from_pretrained``, ``init_from``, ``transforms`` and the timm entry points.

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
    >>> model = biotorch.create_model("lenet_fa", num_classes=10, in_chans=3)
    >>> biotorch.init_from(model, "lenet_fa.fashion_mnist")   # fine-tuning: new head, conv1 adapted to RGB
    >>> tf = biotorch.transforms("lenet_fa.fashion_mnist")
"""
from __future__ import annotations

import functools
import sys
import types
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence, Union

import timm
import torch
from timm.layers import register_notrace_module
from timm.models import adapt_input_conv, build_model_with_cfg, register_model, resolve_pretrained_cfg
from torch import nn
from torchvision.transforms import v2

from . import data
from .convert import convert, convert_layer, redraw_feedback, rule_layers
from .errors import CheckpointError, ConfigError
from .hub import (CONFIG_NAME, DATA_FIELDS, PathLike, describe_mismatch, load_checkpoint, read_header, recorded_sha256,
                  verify_sha256)
from .metrics import count_parameters
from .models import ARCHITECTURES, DEFAULT_CFGS
from .nn import LAYERS
from .registry import PretrainedCfg, describe, get_pretrained_cfg, model_names, split_name, timm_cfg, timm_default_cfgs
from .rules import RULES, make_rule
from .weights import Fetched, Source, fetch, folder_source

__all__ = ["create_model", "from_checkpoint", "from_pretrained", "init_from", "model_parameters",
           "register_with_timm", "transforms"]

# timm's factory arguments every name takes (timm drops those given as None), then biotorch's own. Options of
# a learning rule go to the rule, which refuses another rule's with a ValueError; anything else is a
# TypeError, as in timm.
TIMM_ARGUMENTS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "num_classes", "in_chans",
                  "img_size", "global_pool", "drop_rate", "features_only", "out_indices", "feature_cls", "device",
                  "dtype")
BIOTORCH_ARGUMENTS = ("seed", "checkpoint")
RULE_OPTIONS = tuple(dict.fromkeys(option for rule in RULES.values() for option in rule.options))


class _Weights(NamedTuple):
    """The weights of a build (:func:`biotorch.weights.fetch`) and what they were trained with; ``None``: not
    recorded (whatever the model is built with)."""

    found: Fetched
    num_classes: Optional[int]
    in_chans: Optional[int]
    seed: Optional[int]


def _weights(model_name: str, cfg, checkpoint: Optional[PathLike], cache_dir: Optional[PathLike]) -> _Weights:
    if checkpoint is not None or cfg.file:  # a local folder or file (timm's pretrained_cfg_overlay=dict(file=...))
        found = fetch(folder_source(checkpoint if checkpoint is not None else cfg.file), require_model=False,
                      config_required=False)
        classes = found.config.get("num_classes", cfg.num_classes if checkpoint is None else None)
        return _Weights(found, classes, found.config.get("in_chans"), found.config.get("seed"))
    record = get_pretrained_cfg(f"{model_name}.{cfg.tag}" if cfg.tag else model_name)
    if cfg.hf_hub_id != record.hub_id or cfg.url or cfg.state_dict:
        raise ValueError(f"{model_name}: biotorch loads the weights it publishes ({record.hub_id}), checked "
                         "against their sha256; for other weights pass checkpoint=PATH, "
                         "pretrained_cfg_overlay=dict(file=PATH) or use biotorch.from_pretrained('hf-hub:...')")
    found = fetch(Source("name", record.name, name=record.name), cache_dir=cache_dir)
    return _Weights(found, record.num_classes, record.input_size[0], record.seed)


def _pool_type(model: nn.Module) -> str:
    return getattr(getattr(model, "global_pool", None), "pool_type", "")


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
    convert(model, rule, seed=seed, **rule_options)
    model.biotorch_config = dict(arch=arch, rule=rule, rule_options=dict(rule_options), num_classes=trained_classes,
                                 in_chans=in_chans, seed=seed, input_size=list(model.default_input_size))
    model.reset_classifier = types.MethodType(reset_classifier, model)
    model.register_forward_pre_hook(_check_input)
    if device is not None:
        model.to(device)
    _draw_direct_feedback(model)
    if weights is not None and weights.in_chans not in (None, in_chans):
        source = weights.found.source
        if source.kind == "folder" and not source.path.is_dir():
            raise CheckpointError(f"{source.path} holds {weights.in_chans}-channel weights; adapting them to "
                                  f"in_chans={in_chans} needs its checkpoint folder or its published name")
        taken = init_from(model, source, cache_dir=cache_dir)  # the first convolution adapted
        print(f"biotorch: {source.name or source.path} was trained on {weights.in_chans}-channel images; "
              f"{', '.join(taken['adapted'])} adapted to {in_chans} (timm's adapt_input_conv)", file=sys.stderr)
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


def _check_input(model, args: tuple[torch.Tensor]) -> None:
    """A wrong input shape is named here, rather than as a matrix-multiply error deep inside the model (a
    forward pre-hook; TorchScript compiles it to nothing, so scripted models check nothing)."""
    if not torch.jit.is_scripting():
        _check_shape(model, args[0])


def _check_shape(model: nn.Module, x) -> None:
    channels, height, width = model.default_input_size
    if isinstance(x, torch.Tensor) and (x.dim() != 4 or x.shape[1] != channels or (
            model.fixed_input_size and tuple(x.shape[2:]) != (height, width))):
        size = f"{height}, {width}" if model.fixed_input_size else "H, W"
        raise ValueError(f"{model.biotorch_config['arch']} takes images of shape (N, {channels}, {size}), "
                         f"got {tuple(x.shape)}")


@torch.no_grad()
def _draw_direct_feedback(model: nn.Module) -> None:
    # Feedback shaped by each layer's input (dfa) is drawn by one dry forward, so that it exists (and is
    # identical on every DDP rank) before training starts.
    if any(layer.rule.drawn_at_first_forward for _, layer in rule_layers(model)):
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
    redraw_feedback(model, num_classes)  # no-op unless some layer learns by direct feedback
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
    weights = _weights(model_name, cfg, checkpoint, cache_dir) if pretrained or checkpoint is not None else None
    build = functools.partial(_model, model_name, rule_options, weights, cache_dir)
    model = build_model_with_cfg(build, model_name, pretrained=False, pretrained_cfg=cfg,
                                 feature_cfg=dict(out_indices=tuple(range(DEFAULT_CFGS[arch]["feature_maps"]))),
                                 **kwargs)
    _fit_channels(model.pretrained_cfg, kwargs.get("in_chans", cfg.input_size[0]))
    return model


def _fit_channels(cfg: dict, in_chans: int) -> None:
    """Make a cfg describe ``in_chans``-channel input (a model built with other channels than its cfg's):
    one value per channel repeated, several averaged, as ``adapt_input_conv`` treats the first layer."""
    if cfg["input_size"][0] == in_chans:
        return
    cfg["input_size"] = (in_chans, *cfg["input_size"][1:])
    for key in ("mean", "std"):
        values = tuple(cfg[key])
        if len(values) != in_chans:
            cfg[key] = (values[0] if len(values) == 1 else sum(values) / len(values),) * in_chans


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


def _checkpoint_args(model_name: str, config: dict, num_classes: Optional[int], in_chans: Optional[int]) -> dict:
    """``create_model``'s arguments for a checkpoint's ``config.json`` (``{}`` for a bare file): its classes,
    channels, seed and rule options, and its timm cfg (the published record's, else the architecture's for
    these classes and channels)."""
    args = dict(num_classes=config.get("num_classes", num_classes), in_chans=config.get("in_chans", in_chans),
                seed=config.get("seed", 0), **config.get("rule_options", {}))
    size = tuple(config["input_size"][1:]) if config.get("input_size") else timm_cfg(model_name).input_size[1:]
    if size != timm_cfg(model_name).input_size[1:]:
        args["img_size"] = size
    record = config.get("pretrained_cfg") or {}
    if not isinstance(record, dict):
        raise ConfigError(f"the checkpoint's {CONFIG_NAME}: 'pretrained_cfg' must be an object, got "
                          f"{type(record).__name__}")
    try:  # a published checkpoint: its data, classes and Hub repo
        args["pretrained_cfg"] = timm_cfg(model_name, PretrainedCfg.from_dict(record))
        return args
    except (KeyError, TypeError):  # a run's folder, or a few fields (save_pretrained's, or its argument)
        pass
    overlay = dict(num_classes=args["num_classes"], hf_hub_id=record.get("hub_id"), tag=record.get("tag"),
                   **{k: tuple(record[k]) if isinstance(record[k], list) else record[k]
                      for k in DATA_FIELDS if record.get(k) is not None},
                   input_size=None if args["in_chans"] is None else (args["in_chans"], *size))
    args["pretrained_cfg_overlay"] = {k: v for k, v in overlay.items() if v is not None}
    return args


def _check_fits(name: str, args: dict, header: dict, path: Path) -> None:
    """Build the model on the meta device (no memory) and compare it with the file's header, so that a config
    asking for a huge head or the wrong channels fails here, before anything real is allocated."""
    with torch.device("meta"):
        probe = create_model(name, **args)
    mismatch = describe_mismatch({k: (tuple(shape),) for k, (shape, _) in header.items()},
                                 {k: (tuple(v.shape),) for k, v in probe.state_dict().items()})
    if mismatch:  # shapes only: the file's dtypes are checked against the real model when it is loaded
        raise CheckpointError(f"{path} does not hold a {name} with {probe.num_classes} classes and "
                              f"{probe.in_chans} input channels: {mismatch}")


def from_checkpoint(path: PathLike, name: Optional[str] = None, num_classes: Optional[int] = None,
                    in_chans: Optional[int] = None, device=None) -> nn.Module:
    """A model with the weights of a checkpoint folder, a run folder or a ``.safetensors`` file.

    Everything is checked before it is used: the file's sha256 against the ``config.json`` beside it (when
    there is one), that config's values, and the file's tensor shapes against the model it describes; only
    then is the model built and loaded (strictly: keys, dtypes, finite values, feedback fingerprint).
    ``name``, ``num_classes`` and ``in_chans`` fill in what neither the config nor the file's metadata says.

    Example::

        >>> model = biotorch.factory.from_checkpoint("runs/lenet_fa.fashion_mnist-seed0")
    """
    return _from_found(fetch(folder_source(path), config_required=False), name, num_classes, in_chans, device)


def _from_found(found: Fetched, name: Optional[str] = None, num_classes: Optional[int] = None,
                in_chans: Optional[int] = None, device=None) -> nn.Module:
    """The model of fetched weights: a published name's (its record), else the one its config and file say."""
    if found.source.kind == "name":
        model = create_model(found.record.name, device=device)
        load_checkpoint(model, found.file, found.sha256)
        model.biotorch_config["seed"] = found.record.seed  # its feedback came from its own seed, and a new head's
        return model
    weights = found.file
    verify_sha256(weights, found.sha256)  # before anything of the file is read; hashed once
    header, metadata = read_header(weights)
    arch = found.config.get("arch") or metadata.get("arch")
    rule = found.config.get("rule") or metadata.get("rule")
    if name is not None:
        given_arch, given_rule, _ = split_name(name)
        if (arch and arch != given_arch) or (rule and rule != given_rule):
            raise CheckpointError(f"{weights} holds a {arch}_{rule} checkpoint, not {given_arch}_{given_rule}")
        arch, rule = given_arch, given_rule
    if not arch or not rule:
        raise CheckpointError(f"{weights} does not say which model it holds (no arch/rule metadata): name it, "
                              "e.g. biotorch eval resnet20_fa --checkpoint ...")
    model_name = f"{arch}_{rule}"
    split_name(model_name)  # an unknown architecture or rule in the metadata fails here, with close matches
    args = _checkpoint_args(model_name, found.config, num_classes, in_chans)
    _check_fits(model_name, args, header, weights)
    return load_checkpoint(create_model(model_name, device=device, **args), weights)  # its sha256: checked above


def from_pretrained(name_or_path: Union[PathLike, str, Source], device=None, revision: Optional[str] = None,
                    local_files_only: bool = False, num_classes: Optional[int] = None,
                    cache_dir: Optional[PathLike] = None) -> nn.Module:
    """A model with weights, from a registered name, ``hf-hub:<org>/<repo>``, or a checkpoint folder.

    A string that is a registered name (``"lenet_fa.fashion_mnist"``) always means the published, sha-checked
    weights, even if a folder of that name exists here; pass a ``Path`` (or ``"./name"``) for the folder
    (:mod:`biotorch.weights`).

    Example::

        >>> model = biotorch.from_pretrained("lenet_fa.fashion_mnist", device="cpu")
        >>> model = biotorch.from_pretrained("hf-hub:biotorch/lenet_fa.fashion_mnist")
        >>> model = biotorch.from_pretrained(Path("out/lenet_fa"))
    """
    if isinstance(name_or_path, str) and not name_or_path.strip():
        raise ConfigError("from_pretrained needs a registered name, hf-hub:<org>/<repo> or a folder, got ''")
    model = _from_found(fetch(name_or_path, revision, local_files_only, cache_dir), device=device)
    if num_classes is not None and num_classes != model.biotorch_config["num_classes"]:
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


def init_from(model: nn.Module, source: PathLike, *, label_names: Optional[Sequence[str]] = None,
              revision: Optional[str] = None, local_files_only: bool = False,
              cache_dir: Optional[PathLike] = None) -> dict:
    """Start ``model`` from the checkpoint ``source`` to fine-tune it (timm's ``load_pretrained``); returns what
    was taken from it.

    ``source`` is anything :func:`from_pretrained` loads (a pretrained name, a checkpoint folder, ``hf-hub:ID``),
    checked as every load is (strict, sha256, feedback fingerprint). ``model`` (from :func:`create_model`) must be
    the checkpoint's architecture; its own classes, channels and rule decide what is taken:

    - the head: the checkpoint's when it learned the same classes (``label_names`` when both sides know them,
      else their number), otherwise ``model``'s own new head, which learns with ``model``'s rule;
    - tensors shaped by the input channels (the first convolution's weight, and kp/wm's learned feedback of its
      shape): adapted by timm's ``adapt_input_conv`` when the channels differ;
    - the feedback state (``feedback_*``: kp/wm's learned B, the seeds and steps of the others): the checkpoint's
      when the rule and its options are the same, otherwise ``model``'s own, fresh. Feedback re-derived from
      seeds (fa, frsf, brsf, dfa) is re-derived for ``model``'s shapes, so dfa's B fits the new head.

    Everything else is copied bit for bit.

    Example::

        >>> model = biotorch.create_model("lenet_kp", num_classes=10, in_chans=1)
        >>> init_from(model, "lenet_fa.fashion_mnist", label_names=biotorch.data.DATASETS["cifar10"].label_names)
        {'source': 'lenet_fa.fashion_mnist', ..., 'head': 'new', 'adapted': [], 'feedback': 'fresh'}
    """
    config = getattr(model, "biotorch_config", None)
    if config is None:
        raise ConfigError(f"init_from needs a model built by biotorch.create_model or timm.create_model, got a "
                          f"{type(model).__name__} (for features_only: start the model, then wrap it in timm's "
                          "FeatureListNet)")
    found = fetch(source, revision, local_files_only, cache_dir)
    text = found.source.text
    parent = _from_found(found, device=next(model.parameters()).device)
    origin = parent.biotorch_config
    if origin["arch"] != config["arch"]:
        raise ConfigError(f"init_from {text}: a {origin['arch']} checkpoint cannot start a {config['arch']} model")
    meta = found.record_dict
    same_rule = repr(make_rule(origin["rule"], **origin["rule_options"])) == \
        repr(make_rule(config["rule"], **config["rule_options"]))
    known_labels = label_names is not None and meta.get("label_names") is not None
    same_classes = origin["num_classes"] == config["num_classes"] and (
        not known_labels or list(meta["label_names"]) == list(label_names))
    head = next(n for n, m in model.named_modules() if m is model.get_classifier()) + "."

    def own(key: str) -> bool:  # a tensor the model keeps its own of
        return ((key.startswith(head) and not same_classes)
                or (key.rpartition(".")[2].startswith("feedback_") and not same_rule))

    state, taken, adapted, misfits = model.state_dict(), parent.state_dict(), [], []
    for key in [k for k in state if not own(k)]:
        value = taken.get(key)
        if value is not None and value.shape != state[key].shape:
            if value.ndim == 4 and tuple(state[key].shape) == (value.shape[0], config["in_chans"], *value.shape[2:]):
                value = _adapt_input_conv(value, config["in_chans"], origin["in_chans"])
                adapted.append(key)
            else:
                misfits.append(f"{key} {tuple(value.shape)} vs {tuple(state[key].shape)}")
        if value is None:
            misfits.append(f"{key} missing")
        state[key] = value
    misfits += [f"{key} unexpected" for key in taken if key not in state and not own(key)]
    if misfits:
        raise CheckpointError(f"init_from {text}: the checkpoint does not fit {config['arch']}_{config['rule']}: "
                         f"{'; '.join(misfits[:5])}{' …' if len(misfits) > 5 else ''}")
    model.load_state_dict(state, strict=True)  # re-derives seeded feedback for this model's shapes
    tag = meta.get("tag") or found.source.label(keep_dots=False)
    return {"source": text, "name": meta.get("name"),
            "hub_id": found.source.repo_id or meta.get("hub_id"),
            "arch": origin["arch"], "rule": origin["rule"], "rule_options": origin["rule_options"], "tag": tag,
            "dataset": meta.get("dataset"), "num_classes": origin["num_classes"], "in_chans": origin["in_chans"],
            "sha256": recorded_sha256(meta),
            "head": "kept" if same_classes else "new", "adapted": adapted,
            "feedback": "kept" if same_rule else "fresh"}


def _adapt_input_conv(weight: torch.Tensor, in_chans: int, base_chans: int) -> torch.Tensor:
    try:
        return adapt_input_conv(in_chans, weight, base_chans=base_chans)
    except TypeError:  # before timm 1.0.31 the helper assumed 3-channel checkpoints
        raise ValueError(f"adapting a {base_chans}-channel first layer to {in_chans} channels needs timm>=1.0.31 "
                         "(adapt_input_conv's base_chans)") from None


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
