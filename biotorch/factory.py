"""The builder: ``create_model``, ``from_pretrained``, ``transforms`` and the timm entry points.

A model is an architecture (``biotorch.models``) converted to a learning rule (``biotorch.convert``),
optionally with published weights (``biotorch.hub``) described by the registry (``biotorch.registry``).

Example::

    >>> model = biotorch.create_model("resnet20_dfa", num_classes=100)
    >>> model.reset_classifier(5)                    # new head learns with dfa; feedback redrawn for 5
    >>> model = biotorch.from_pretrained("hf-hub:biotorch/lenet_fa.fashion_mnist")
    >>> model = biotorch.create_model("lenet_fa", num_classes=10, in_chans=3)
    >>> biotorch.init_from(model, "lenet_fa.fashion_mnist")   # fine-tuning: new head, conv1 adapted to RGB
    >>> tf = biotorch.transforms("lenet_fa.fashion_mnist")
"""
from __future__ import annotations

import dataclasses
import functools
import re
import sys
import types
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn
from timm.models import adapt_input_conv
from torchvision.transforms import v2

from . import data
from .convert import convert, convert_layer, redraw_feedback, rule_layers
from .errors import CheckpointError, ConfigError
from .hub import (CONFIG_NAME, WEIGHTS_NAME, PathLike, download_repo, load_checkpoint, load_weights, read_config, read_header,
                  verify_sha256, weights_file)
from .metrics import count_parameters
from .models import ARCHITECTURES
from .nn import LAYERS
from .registry import describe, get_pretrained_cfg, model_names, split_name
from .rules import make_rule


def _build(arch: str, rule: str, num_classes: Optional[int], in_chans: Optional[int], seed: int,
           rule_options: dict) -> nn.Module:
    given = {k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans).items() if v is not None}
    model = ARCHITECTURES[arch](**given)  # the architecture's defaults for what is not given
    convert(model, rule, seed=seed, **rule_options)
    model.biotorch_config = dict(arch=arch, rule=rule, rule_options=dict(rule_options),
                                 num_classes=model.num_classes, in_chans=model.in_chans, seed=seed,
                                 input_size=list(model.default_input_size))
    model.reset_classifier = types.MethodType(reset_classifier, model)
    model.register_forward_pre_hook(_check_input)
    _draw_direct_feedback(model)
    return model


def _check_input(model: nn.Module, args) -> None:
    """A wrong input shape is named here, rather than as a matrix-multiply error deep inside the model."""
    x, (channels, height, width) = args[0], model.default_input_size
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


def reset_classifier(model: nn.Module, num_classes: int, *args, **kwargs) -> None:
    """timm's ``reset_classifier``; the new head learns with the model's rule (dfa feedback is redrawn)."""
    config = model.biotorch_config
    type(model).reset_classifier(model, num_classes, *args, **kwargs)
    head = model.get_classifier()
    if type(head) in LAYERS:
        name = next(n for n, m in model.named_modules() if m is head)
        convert_layer(model, name, config["rule"], config["seed"] * 10007 + 9999, **config["rule_options"])
    config["num_classes"] = num_classes
    redraw_feedback(model, num_classes)  # no-op unless some layer learns by direct feedback
    _draw_direct_feedback(model)


def create_model(name: str, pretrained: bool = False, num_classes: Optional[int] = None,
                 in_chans: Optional[int] = None, device: Union[str, torch.device, None] = None, seed: int = 0,
                 checkpoint: Union[str, Path, None] = None, **rule_options: Any) -> nn.Module:
    """Build ``arch_rule`` (or ``arch_rule.tag``), optionally with its pretrained weights.

    Args:
        name: e.g. ``"resnet20_fa"`` or ``"resnet20_fa.fashion_mnist"`` (a tag sets num_classes/in_chans
            from the checkpoint's metadata even without weights).
        pretrained: load the tag's published weights (local folder → clone's ``model_cards/`` → Hub).
        num_classes: with ``pretrained``, a value different from the checkpoint's gives a new head (and
            dfa feedback drawn for it), with a warning (:func:`init_from`).
        in_chans: input channels; with ``pretrained``, a value different from the checkpoint's adapts the first
            convolution as timm does (:func:`init_from`).
        device: where the model lives (weights are loaded straight there).
        seed: seed of the feedback matrices (ignored when loading weights, which carry their feedback).
        checkpoint: a local folder or ``.safetensors`` file to load instead of the published weights.
        **rule_options: options of the rule, e.g. ``mirror_lr`` for wm.
    """
    arch, rule, tag = split_name(name)
    cfg = get_pretrained_cfg(name) if pretrained or tag else None
    if cfg is not None:
        rule_options = {**cfg.rule_options, **rule_options}
    model = _build(arch, rule, num_classes if num_classes is not None else (cfg.num_classes if cfg else None),
                   in_chans or (cfg.input_size[0] if cfg else None), seed, rule_options)
    if cfg is not None:
        model.pretrained_cfg = dataclasses.asdict(cfg)
    if device is not None:
        model.to(device)
    if checkpoint is not None or not pretrained:
        if checkpoint is not None:
            load_weights(model, cfg, checkpoint)
        return model
    if (model.num_classes, model.in_chans) == (cfg.num_classes, cfg.input_size[0]):
        load_weights(model, cfg)
        model.biotorch_config["seed"] = cfg.metrics.get("seed", seed)  # its feedback came from its own seed
        return model
    taken = init_from(model, cfg.name)
    if taken["head"] == "new":
        print(f"biotorch: {cfg.name} was trained with {cfg.num_classes} classes; the head is re-initialised for "
              f"{model.num_classes}", file=sys.stderr)
    if taken["adapted"]:
        print(f"biotorch: {cfg.name} was trained on {cfg.input_size[0]}-channel images; "
              f"{', '.join(taken['adapted'])} adapted to {model.in_chans} (timm's adapt_input_conv)", file=sys.stderr)
    return model


@functools.lru_cache(maxsize=None)
def model_parameters(name: str) -> tuple[int, int]:
    """Parameter counts of a registered model at its defaults, computed on the meta device (instant)."""
    with torch.device("meta"):
        return count_parameters(create_model(name))


# --- timm interop: every name is a timm entrypoint after `import biotorch` -------------------------------
def _timm_entrypoint(model_name: str):
    def entrypoint(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs):
        tag = getattr(pretrained_cfg, "tag", None) if pretrained_cfg is not None else None
        for unused in ("features_only", "cache_dir"):
            kwargs.pop(unused, None)
        return create_model(f"{model_name}.{tag}" if tag else model_name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = model_name
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = describe(model_name)
    return entrypoint


def register_with_timm() -> None:
    try:
        from timm.models import register_model
    except ImportError:  # timm is optional at run time
        return
    for model_name in model_names():
        register_model(_timm_entrypoint(model_name))


def _check_fits(name: str, build: dict, header: dict, path: Path) -> None:
    """Build the model on the meta device (no memory) and compare it with the file's header, so that a config
    asking for a huge head or the wrong channels fails here, before anything real is allocated."""
    arch, rule, _ = split_name(name)
    with torch.device("meta"):
        probe = _build(arch, rule, build.get("num_classes"), build.get("in_chans"), 0, build.get("rule_options", {}))
    shapes = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    missing, unexpected = sorted(shapes.keys() - header.keys()), sorted(header.keys() - shapes.keys())
    wrong = [f"{k} {header[k][0]} vs {shapes[k]}" for k in sorted(shapes.keys() & header.keys())
             if header[k][0] != shapes[k]]
    if missing or unexpected or wrong:
        details = "; ".join(f"{label}: {', '.join(items[:4])}{' …' if len(items) > 4 else ''}"
                            for label, items in (("missing", missing), ("unexpected", unexpected),
                                                 ("shape", wrong)) if items)
        raise CheckpointError(f"{path} does not hold a {name} with {build.get('num_classes')} classes and "
                              f"{build.get('in_chans')} input channels: {details}")


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
    weights, expected = weights_file(path)
    verify_sha256(weights, expected)  # before anything of the file is read
    header, metadata = read_header(weights)
    beside = weights.parent / CONFIG_NAME
    config = read_config(weights.parent) if beside.is_file() and expected is not None else {}
    arch = config.get("arch") or metadata.get("arch")
    rule = config.get("rule") or metadata.get("rule")
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
    build = dict(num_classes=config.get("num_classes", num_classes), in_chans=config.get("in_chans", in_chans),
                 rule_options=config.get("rule_options", {}))
    _check_fits(model_name, build, header, weights)
    model = create_model(model_name, device=device, num_classes=build["num_classes"], in_chans=build["in_chans"],
                         seed=config.get("seed", 0), **build["rule_options"])
    if "pretrained_cfg" in config:
        model.pretrained_cfg = config["pretrained_cfg"]
    return load_checkpoint(model, weights, expected)


def from_pretrained(name_or_path: Union[PathLike, str], device=None, revision: Optional[str] = None,
                    local_files_only: bool = False, num_classes: Optional[int] = None) -> nn.Module:
    """A model with weights, from a registered name, ``hf-hub:<org>/<repo>``, or a checkpoint folder.

    A string that is a registered name (``"lenet_fa.fashion_mnist"``) always means the published, sha-checked
    weights, even if a folder of that name exists here; pass a ``Path`` (or ``"./name"``) for the folder.

    Example::

        >>> model = biotorch.from_pretrained("lenet_fa.fashion_mnist", device="cpu")
        >>> model = biotorch.from_pretrained("hf-hub:biotorch/lenet_fa.fashion_mnist")
        >>> model = biotorch.from_pretrained(Path("out/lenet_fa"))
    """
    if isinstance(name_or_path, str) and not name_or_path.strip():
        raise ConfigError("from_pretrained needs a registered name, hf-hub:<org>/<repo> or a folder, got ''")
    text = str(name_or_path)
    if text.startswith("hf-hub:"):
        model = from_checkpoint(download_repo(text[len("hf-hub:"):], revision, local_files_only), device=device)
    elif isinstance(name_or_path, str) and _is_registered(text):
        # a registered name: its published weights (mirror, then Hub at ``revision``)
        cfg = get_pretrained_cfg(text)
        model = create_model(cfg.name, device=device)
        load_weights(model, cfg, revision=revision, local_files_only=local_files_only)
    elif Path(text).is_dir():
        read_config(text)  # a checkpoint folder has a valid config.json: say so before looking for weights
        model = from_checkpoint(Path(text), device=device)
    else:
        get_pretrained_cfg(text)  # not a folder either: fail with the name's close matches
        raise FileNotFoundError(f"no checkpoint folder at {text}")
    if num_classes is not None and num_classes != model.biotorch_config["num_classes"]:
        model.reset_classifier(num_classes)
    return model


def _is_registered(text: str) -> bool:
    try:
        get_pretrained_cfg(text)
    except (TypeError, ValueError):
        return False
    return True


def transforms(name_or_model) -> v2.Compose:
    """The eval transform (PIL image or uint8 tensor → normalised tensor) of a pretrained checkpoint: a name
    such as ``"lenet_fa.fashion_mnist"``, or a model created with a tag.

    Example::

        >>> tf = biotorch.transforms("lenet_fa.fashion_mnist")
    """
    if isinstance(name_or_model, str):
        return data.transforms(get_pretrained_cfg(name_or_model))
    return data.transforms(name_or_model)


def init_from(model: nn.Module, source: PathLike, *, label_names: Optional[Sequence[str]] = None,
              revision: Optional[str] = None, local_files_only: bool = False) -> dict:
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
    config = model.biotorch_config
    text = str(source)
    parent = from_pretrained(source, device=next(model.parameters()).device, revision=revision,
                             local_files_only=local_files_only)
    origin = parent.biotorch_config
    if origin["arch"] != config["arch"]:
        raise ConfigError(f"init_from {text}: a {origin['arch']} checkpoint cannot start a {config['arch']} model")
    meta = getattr(parent, "pretrained_cfg", None) or {}
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
    tag = meta.get("tag") or re.sub(r"[^A-Za-z0-9_-]+", "_", Path(text.removeprefix("hf-hub:")).name)
    return {"source": text, "name": meta.get("name"),
            "hub_id": text.removeprefix("hf-hub:") if text.startswith("hf-hub:") else meta.get("hub_id"),
            "arch": origin["arch"], "rule": origin["rule"], "rule_options": origin["rule_options"], "tag": tag,
            "dataset": meta.get("dataset"), "num_classes": origin["num_classes"], "in_chans": origin["in_chans"],
            "sha256": (meta.get("files") or {}).get(WEIGHTS_NAME, {}).get("sha256"),
            "head": "kept" if same_classes else "new", "adapted": adapted,
            "feedback": "kept" if same_rule else "fresh"}


def _adapt_input_conv(weight: torch.Tensor, in_chans: int, base_chans: int) -> torch.Tensor:
    try:
        return adapt_input_conv(in_chans, weight, base_chans=base_chans)
    except TypeError:  # before timm 1.0.31 the helper assumed 3-channel checkpoints
        raise ValueError(f"adapting a {base_chans}-channel first layer to {in_chans} channels needs timm>=1.0.31 "
                         "(adapt_input_conv's base_chans)") from None
