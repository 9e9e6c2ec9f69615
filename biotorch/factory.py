"""The builder: ``create_model``, ``from_pretrained``, ``transforms`` and the timm entry points.

A model is an architecture (``biotorch.models``) converted to a learning rule (``biotorch.convert``),
optionally with published weights (``biotorch.hub``) described by the registry (``biotorch.registry``).

Example::

    >>> model = biotorch.create_model("resnet20_dfa", num_classes=100)
    >>> model.reset_classifier(5)                    # new head learns with dfa; feedback redrawn for 5
    >>> model = biotorch.from_pretrained("hf-hub:biotorch/lenet_fa.fashion_mnist")
    >>> tf = biotorch.transforms("lenet_fa.fashion_mnist")
"""
from __future__ import annotations

import dataclasses
import functools
import sys
import types
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn
from torchvision.transforms import v2

from . import data
from .convert import convert, convert_layer, redraw_feedback
from .errors import CheckpointError, ConfigError
from .hub import (CONFIG_NAME, PathLike, download_repo, load_checkpoint, load_weights, read_config, read_header,
                  verify_sha256, weights_file)
from .metrics import count_parameters
from .models import ARCHITECTURES
from .nn import LAYERS
from .registry import describe, get_pretrained_cfg, model_names, split_name
from .rules import DFA


def _build(arch: str, rule: str, num_classes: Optional[int], in_chans: Optional[int], seed: int,
           rule_options: dict) -> nn.Module:
    given = {k: v for k, v in dict(num_classes=num_classes, in_chans=in_chans).items() if v is not None}
    model = ARCHITECTURES[arch](**given)  # the architecture's defaults for what is not given
    convert(model, rule, seed=seed, **rule_options)
    model.biotorch_config = dict(arch=arch, rule=rule, rule_options=dict(rule_options),
                                 num_classes=model.num_classes, in_chans=model.in_chans, seed=seed,
                                 input_size=list(model.default_input_size))
    model.reset_classifier = types.MethodType(reset_classifier, model)
    _draw_direct_feedback(model)
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
        num_classes: a value different from the checkpoint's drops and re-initialises the head (and
            redraws dfa feedback), with a warning.
        in_chans: input channels.
        device: where the model lives (weights are loaded straight there).
        seed: seed of the feedback matrices (ignored when loading weights, which carry their feedback).
        checkpoint: a local folder or ``.safetensors`` file to load instead of the published weights.
        **rule_options: options of the rule, e.g. ``mirror_lr`` for wm.
    """
    arch, rule, tag = split_name(name)
    cfg = get_pretrained_cfg(name) if pretrained or tag else None
    if cfg is not None:
        rule_options = {**cfg.rule_options, **rule_options}
    model = _build(arch, rule, cfg.num_classes if cfg else num_classes,
                   in_chans or (cfg.input_size[0] if cfg else None), seed, rule_options)
    if cfg is not None:
        model.pretrained_cfg = dataclasses.asdict(cfg)
    if device is not None:
        model.to(device)
    if pretrained or checkpoint is not None:
        load_weights(model, cfg, checkpoint)
        if checkpoint is None:  # the published checkpoint's feedback was drawn from its own seed
            model.biotorch_config["seed"] = cfg.metrics.get("seed", seed)
    if num_classes is not None and num_classes != model.biotorch_config["num_classes"]:
        if pretrained or checkpoint is not None:
            print(f"biotorch: {name} was trained with {model.biotorch_config['num_classes']} classes; "
                  f"the head is re-initialised for {num_classes}", file=sys.stderr)
        model.reset_classifier(num_classes)
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
