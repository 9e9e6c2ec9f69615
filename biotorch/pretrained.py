"""Models from checkpoints: ``from_pretrained``, ``from_checkpoint`` and ``init_from`` (fine-tuning).

Where the weights come from (a published name, a folder, ``hf-hub:``) is :mod:`biotorch.weights`'s to say;
this module builds the model they describe (:func:`biotorch.factory.create_model`), after checking the file
against it, or starts a model of the user's from them (:func:`init_from`, timm's ``load_pretrained`` on the
state dict: :func:`biotorch.builder.merge_state`).

Example::

    >>> model = biotorch.from_pretrained("hf-hub:biotorch/lenet_fa.fashion_mnist")
    >>> model = biotorch.create_model("lenet_fa", num_classes=10, in_chans=3)
    >>> biotorch.init_from(model, "lenet_fa.fashion_mnist")   # fine-tuning: new head, conv1 adapted to RGB
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .builder import merge_state
from .errors import CheckpointError, ConfigError
from .factory import create_model
from .hub import (CONFIG_NAME, DATA_FIELDS, PathLike, describe_mismatch, load_checkpoint, read_header, recorded_sha256,
                  verify_sha256)
from .models import DEFAULT_CFGS
from .registry import CheckpointRecord, check_name_part, split_name, timm_cfg
from .rules import make_rule
from .weights import Fetched, Source, fetch, folder_source

__all__ = ["from_checkpoint", "from_pretrained", "init_from"]


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
        args["pretrained_cfg"] = timm_cfg(model_name, CheckpointRecord.from_dict(record))
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

        >>> model = biotorch.pretrained.from_checkpoint("runs/lenet_fa.fashion_mnist-seed0")
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
    config = getattr(model, "biotorch_config", {})
    if "arch" not in config:
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
    state = model.state_dict()
    adapted = merge_state(state, parent.state_dict(), first_conv=DEFAULT_CFGS[config["arch"]]["first_conv"],
                          head=DEFAULT_CFGS[config["arch"]]["classifier"], take_head=same_classes,
                          take_feedback=same_rule,
                          what=f"init_from {text}: the checkpoint does not fit {config['arch']}_{config['rule']}")
    model.load_state_dict(state, strict=True)  # re-derives seeded feedback for this model's shapes
    # Provenance from the bytes: the sha256 recorded is the one the load above verified, and a folder whose record
    # claims other weights (a published checkpoint's name over swapped weights) is refused.
    claimed = recorded_sha256(meta) if meta else None
    if found.source.kind != "name" and claimed is not None and claimed != found.sha256:
        raise CheckpointError(f"init_from {text}: its config.json says it is {meta.get('name') or 'a checkpoint'} "
                              f"with sha256 {str(claimed)[:12]}…, but its weights are {str(found.sha256)[:12]}…: "
                              "refused")
    tag = check_name_part(meta.get("tag") or found.source.label(keep_dots=False), f"init_from {text}: the tag")
    return {"source": text, "name": meta.get("name"),
            "hub_id": found.source.repo_id or meta.get("hub_id"),
            "arch": origin["arch"], "rule": origin["rule"], "rule_options": origin["rule_options"], "tag": tag,
            "dataset": meta.get("dataset"), "num_classes": origin["num_classes"], "in_chans": origin["in_chans"],
            "sha256": found.sha256,
            "head": "kept" if same_classes else "new", "adapted": adapted,
            "feedback": "kept" if same_rule else "fresh"}
