"""Checkpoint folders as Hugging Face Hub repos: safetensors weights, strict loading, mirror → Hub download.

A checkpoint folder *is* a Hub repo: ``model.safetensors`` (forward weights and the feedback state needed to
keep training with the same rule; its metadata names arch, rule and biotorch version), ``config.json``
(architecture, rule and options, classes, channels, pretrained metadata), ``README.md`` (the model card) and
the training record. Where weights come from (a published name, a folder, a Hub repo) is
:mod:`biotorch.weights`.

Building a model around a checkpoint is :mod:`biotorch.pretrained` (``from_pretrained``); building a card folder
from a training run and pushing it is :mod:`biotorch.publish` (``push_to_hub``).

Example::

    >>> biotorch.hub.save_pretrained(model, "out/lenet_fa")                  # model.safetensors + config.json
    >>> biotorch.hub.load_checkpoint(model, "out/lenet_fa/model.safetensors")  # strict, all or nothing
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Optional, Union

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .convert import feedback_fingerprint
from .errors import CheckpointError, ConfigError, shorten
from .files import REPO_ROOT, atomic_write, sha256, write_json
from .models import ARCHITECTURES
from .rules import RULE_NAME, RULES, make_rule
from .version import __version__

WEIGHTS_NAME = "model.safetensors"
RUN_WEIGHTS = "best.safetensors"  # a training run's weights (its best validation epoch)
CONFIG_NAME = "config.json"
HUB_ORG = "biotorch"
MIRROR = REPO_ROOT / "model_cards"  # the offline mirror of the Hub inside a clone of this repository

PathLike = Union[str, os.PathLike]


def canonical_safetensors(path: PathLike) -> PathLike:
    """Rewrite a safetensors header with its keys sorted, so equal tensors and metadata give equal bytes.

    safetensors serialises ``__metadata__`` from a hash map, in an order that changes from call to call;
    without this every rebuild would change the sha256 and re-push unchanged weights.
    """
    with open(path, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))  # offsets are explicit: the order of the entries carries nothing
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()
        if len(text) <= length:  # the same keys and values: the same length, padded as safetensors pads
            f.seek(8)
            f.write(text.ljust(length, b" "))
    return path


def save_weights(model: nn.Module, path: PathLike, metadata: Optional[dict] = None) -> Path:
    """The model's state_dict as safetensors (atomically), with arch/rule/version and feedback fingerprint.

    Feedback that is a function of (seed, step) is not in the state_dict (``rule.derived``); its
    fingerprint is stored instead and checked by :func:`load_checkpoint`.
    """
    config = getattr(model, "biotorch_config", {})
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {"format": "pt", "arch": str(config.get("arch", type(model).__name__)),
                "rule": str(config.get("rule", "")), "biotorch_version": __version__,
                "feedback_fingerprint": feedback_fingerprint(model),
                **{k: str(v) for k, v in (metadata or {}).items()}}

    def write(tmp):
        save_file(state, tmp, metadata=metadata)
        canonical_safetensors(tmp)  # byte-stable: same weights, same sha256, no spurious re-push

    return atomic_write(path, write)


# What a model's timm cfg says about its data, kept by save_pretrained so the folder reloads with it.
DATA_FIELDS = ("mean", "std", "interpolation", "crop_pct", "label_names")


def checkpoint_config(model: nn.Module, files: dict, pretrained_cfg: Optional[dict] = None) -> dict:
    """The ``config.json`` of a checkpoint of ``model`` whose weights are ``files`` ({name: file_record}):
    ``model.biotorch_config`` (arch, rule, seed, classes, channels, input size) and ``pretrained_cfg`` (a
    published record), else the data fields of the model's own timm cfg (normalisation, interpolation, crop, and
    the label names of its head, never another head's)."""
    config = dict(model.biotorch_config)
    head_labels = config.pop("label_names", ())  # reset_classifier's (None: a head without names)
    config["files"] = files
    if pretrained_cfg is None and isinstance(getattr(model, "pretrained_cfg", None), dict):
        pretrained_cfg = {k: model.pretrained_cfg[k] for k in DATA_FIELDS if model.pretrained_cfg.get(k) is not None}
        labels = pretrained_cfg.pop("label_names", None)
        labels = labels if head_labels == () else head_labels
        if labels is not None and len(labels) == config["num_classes"]:  # never another head's names
            pretrained_cfg["label_names"] = list(labels)
    if pretrained_cfg:
        config["pretrained_cfg"] = pretrained_cfg
    return config


def save_pretrained(model: nn.Module, folder: PathLike, pretrained_cfg: Optional[dict] = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder`` (a Hub repo layout); returns it.

    ``pretrained_cfg`` (a published record) goes into the config; without it, the data fields of the
    model's own timm cfg (normalisation, interpolation, crop, label names) do (:func:`checkpoint_config`)."""
    if "arch" not in getattr(model, "biotorch_config", {}):  # convert() alone records the rule, not the architecture
        raise ValueError("save_pretrained needs a model from biotorch.create_model (it records arch and rule)")
    folder = Path(folder)
    weights = save_weights(model, folder / WEIGHTS_NAME)
    write_json(folder / CONFIG_NAME, checkpoint_config(model, {WEIGHTS_NAME: file_record(weights)}, pretrained_cfg))
    return folder


def _open_error(path, error) -> CheckpointError:
    return CheckpointError(f"{path} is not a readable safetensors checkpoint (corrupt, truncated or another "
                           f"format): {shorten(str(error), 200)}")


def verify_sha256(path: PathLike, expected: Optional[str]) -> None:
    """Refuse ``path`` unless its sha256 is ``expected`` (no check when nothing is expected)."""
    if expected is not None and (actual := sha256(path)) != expected:
        raise CheckpointError(f"{path} is not the file its record names (sha256 {actual[:12]}…, expected "
                              f"{expected[:12]}…): it is corrupt, truncated or replaced; delete it to re-download")


def read_header(path: PathLike) -> tuple[dict[str, tuple[tuple[int, ...], str]], dict]:
    """({name: (shape, dtype)}, metadata) of a safetensors file, reading no tensor data."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
            return shapes, dict(f.metadata() or {})
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise _open_error(path, error) from None


def read_checkpoint(path: PathLike, expected_sha256: Optional[str] = None, device=None) -> tuple[dict, dict]:
    """(state_dict, metadata) of a safetensors file, refusing a corrupt, truncated or unexpected file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    verify_sha256(path, expected_sha256)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path), device=str(device) if device is not None else "cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise _open_error(path, error) from None
    return state, metadata


def describe_mismatch(found: dict[str, tuple], expected: dict[str, tuple]) -> str:
    """What keeps tensors ``found`` from loading into ``expected`` (both ``{name: (shape,)}`` or
    ``{name: (shape, dtype)}``): missing, unexpected, shape and dtype clauses, five names each at most;
    ``""`` when they fit."""
    both = sorted(found.keys() & expected.keys())
    clauses = (("missing", sorted(expected.keys() - found.keys())), ("unexpected", sorted(found.keys() - expected.keys())),
               ("shape", [f"{k} {found[k][0]} vs model {expected[k][0]}" for k in both if found[k][0] != expected[k][0]]),
               ("dtype", [f"{k} {found[k][1]} vs model {expected[k][1]}" for k in both if found[k][1:] != expected[k][1:]]))
    return "; ".join(f"{label}: {', '.join(items[:5])}{' …' if len(items) > 5 else ''}" for label, items in clauses
                     if items)


def load_checkpoint(model: nn.Module, path: PathLike, expected_sha256: Optional[str] = None, *,
                    allow_nonfinite: bool = False) -> nn.Module:
    """Load ``path`` into ``model`` strictly; on any mismatch raise and leave the model untouched.

    Checked, in order: the sha256 (when known), arch and rule, keys, shapes, dtypes, finite values (unless
    ``allow_nonfinite``), and the fingerprint of the feedback re-derived from the loaded seeds.
    """
    device = next(model.parameters()).device
    state, metadata = read_checkpoint(path, expected_sha256, device)
    config = getattr(model, "biotorch_config", {})
    for key in ("arch", "rule"):
        if metadata.get(key) and config.get(key) and metadata[key] != config[key]:
            raise CheckpointError(f"{path} holds a {metadata.get('arch')}_{metadata.get('rule')} checkpoint, not "
                                  f"{config['arch']}_{config['rule']}")
    expected = model.state_dict()
    layout = lambda tensors: {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}  # noqa: E731
    mismatch = describe_mismatch(layout(state), layout(expected))
    if mismatch:
        raise CheckpointError(f"{path} does not fit this model: {mismatch}")
    if not allow_nonfinite:  # (the keys are the model's: they fit)
        bad = [k for k in sorted(state) if state[k].is_floating_point() and not bool(state[k].isfinite().all())]
        if bad:
            raise CheckpointError(f"{path} holds NaN or infinite values in {', '.join(bad[:5])}: refused "
                                  "(pass allow_nonfinite=True to inspect it anyway)")
    before = {k: v.detach().clone() for k, v in expected.items()}
    model.load_state_dict(state, strict=True)  # re-derives feedback from the loaded seeds and steps
    fingerprint = feedback_fingerprint(model)
    if metadata.get("feedback_fingerprint") != fingerprint:
        model.load_state_dict(before, strict=True)
        saved = metadata.get("feedback_fingerprint")
        raise CheckpointError(f"{path}: the feedback re-derived from its seeds does not match the fingerprint "
                              f"saved with it ({fingerprint[:12]}… vs {saved[:12] + '…' if saved else 'none saved'}): "
                              "it was written by a biotorch whose feedback generator or options differ from this one")
    return model


def find_weights(path: PathLike) -> Path:
    """The weights file of a checkpoint folder (``model.safetensors``), a run folder (``best.safetensors``) or a
    file."""
    path = Path(path)
    if path.is_dir():
        names = (WEIGHTS_NAME, RUN_WEIGHTS)
        found = next((path / n for n in names if (path / n).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"no weights in {path}: expected {' or '.join(names)} (a checkpoint or run folder)")
        return found
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return path


def recorded_sha256(config: dict, name: str = WEIGHTS_NAME) -> Optional[str]:
    """The sha256 a ``config.json`` (as read by :func:`read_config`) records for its file ``name``, or None."""
    return config.get("files", {}).get(name, {}).get("sha256")


def folder_sha256(folder: PathLike, name: str = WEIGHTS_NAME) -> Optional[str]:
    """The sha256 ``folder/config.json`` records for its file ``name``; None without a config or a record."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        return None
    return recorded_sha256(read_config(folder, require_model=False), name)


def file_record(path: Path) -> dict:
    """The ``{"sha256", "size"}`` record of a file, as ``config.json``'s ``files`` holds it."""
    return {"sha256": sha256(path), "size": path.stat().st_size}


def config_beside(weights: Path, require_model: bool = False) -> dict:
    """The checked ``config.json`` in the weights file's own folder (:func:`read_config`), ``{}`` if none."""
    return read_config(weights.parent, require_model) if (weights.parent / CONFIG_NAME).is_file() else {}


def _positive_int(config: dict, key: str, where, zero: str = "") -> None:
    """``config[key]`` is a positive integer (or 0 where ``zero`` says what 0 means)."""
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero else 1):
        raise ConfigError(f"{where}: {key!r} must be a positive integer{f', or 0 ({zero})' if zero else ''}, "
                          f"got {value!r}")


def _check_record(record, path) -> None:
    """The types of the data fields of a ``config.json``'s ``pretrained_cfg`` (a published record or
    save_pretrained's data fields), so that a wrong one is named here rather than as a TypeError later."""
    if not isinstance(record, dict):
        raise ConfigError(f"{path}: 'pretrained_cfg' must be an object, got {type(record).__name__}")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    checks = {"label_names": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), "a list of names"),
              "mean": (lambda v: isinstance(v, list) and v and all(map(number, v)), "a list of numbers"),
              "std": (lambda v: isinstance(v, list) and v and all(number(x) and x > 0 for x in v),
                      "a list of positive numbers"),
              "crop_pct": (lambda v: number(v) and v > 0, "a positive number"),
              "interpolation": (lambda v: v in ("bilinear", "bicubic", "nearest"), "bilinear, bicubic or nearest"),
              "files": (lambda v: isinstance(v, dict) and all(isinstance(r, dict) for r in v.values()),
                        "an object of file records"),
              **{key: (lambda v: isinstance(v, str), "a string") for key in ("name", "tag", "hub_id", "dataset")}}
    for key, (valid, what) in checks.items():
        if record.get(key) is not None and not valid(record[key]):
            raise ConfigError(f"{path}: 'pretrained_cfg.{key}' must be {what}, got "
                              f"{shorten(repr(record[key]), 120)}")


def read_config(folder: PathLike, require_model: bool = True) -> dict:
    """A checkpoint folder's ``config.json``, every value checked before anything is built from it."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}: not a biotorch checkpoint folder")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} must hold a JSON object, got {type(config).__name__}")
    files = config.get("files", {})
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256", ""), str)
                                              for v in files.values()):
        raise ConfigError(f"{path}: 'files' must map file names to {{\"sha256\": ...}}")
    _check_record(config.get("pretrained_cfg", {}), path)
    if not require_model:
        return config
    size = config.get("input_size")
    if size is not None and not (isinstance(size, list) and len(size) == 3 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
        raise ConfigError(f"{path}: 'input_size' must be [channels, height, width] (positive integers), got {size!r}")
    arch, rule = config.get("arch"), config.get("rule")
    if arch not in ARCHITECTURES:
        raise ConfigError(f"{path}: 'arch' is {arch!r}; known architectures: {', '.join(ARCHITECTURES)}")
    if rule not in RULES:
        module = config.get("rule_module")
        if (isinstance(module, str) and all(part.isidentifier() for part in module.split("."))
                and isinstance(rule, str) and RULE_NAME.fullmatch(rule) is not None):
            raise ConfigError(f"{path}: its rule {rule!r} is defined in the module {module!r}, which is not imported "
                              f"(or not installed): import {module} (it registers the rule) before loading; on the "
                              f"command line, biotorch --plugin {module} COMMAND")
        raise ConfigError(f"{path}: 'rule' is {rule!r}; known rules: {', '.join(RULES)}")
    _positive_int(config, "num_classes", path, zero="no classifier: a headless model")
    _positive_int(config, "in_chans", path)
    if not isinstance(config.get("seed", 0), int) or isinstance(config.get("seed", 0), bool):
        raise ConfigError(f"{path}: 'seed' must be an integer, got {config.get('seed')!r}")
    options = config.get("rule_options", {})
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: 'rule_options' must be an object, got {type(options).__name__}")
    try:
        make_rule(rule, **options)  # only the options the rule takes, with values it accepts
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: 'rule_options': {error}") from None
    return config


def upload_folder(folder: PathLike, repo_id: str, token: Optional[str] = None, private: bool = False,
                  commit_message: Optional[str] = None, revision: Optional[str] = None,
                  endpoint: Optional[str] = None):
    """Push a checkpoint folder to the Hub repo ``repo_id`` in one commit; returns huggingface_hub's ``CommitInfo``."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder ({WEIGHTS_NAME}, {CONFIG_NAME})")
    links = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_symlink()]
    if links:  # a link could publish any file of this machine
        raise CheckpointError(f"{folder} holds symbolic links ({', '.join(links[:5])}): refusing to upload; "
                              "replace them with the files themselves")
    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
                                 commit_message=commit_message or f"Upload {folder.name} with biotorch")
    except Exception as error:  # the HTTP client's transport errors (httpx's or httpx2's, by hub version)
        if isinstance(error, OSError) or not any(c.__name__ == "TransportError" for c in type(error).__mro__):
            raise
        raise ConnectionError(f"could not reach the Hub at {api.endpoint} to push {repo_id}: {error}") from None
