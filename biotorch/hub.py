"""Checkpoint folders as Hugging Face Hub repos: safetensors weights, strict loading, mirror → Hub download.

A checkpoint folder *is* a Hub repo: ``model.safetensors`` (forward weights and the feedback state needed to
keep training with the same rule; its metadata names arch, rule and biotorch version), ``config.json``
(architecture, rule and options, classes, channels, pretrained metadata), ``README.md`` (the model card) and
the training record. Weights are looked up in order: an explicit local folder, this clone's
``model_cards/`` mirror, then the Hub (``hf_hub_download``: cached, ``revision``, offline mode).

Building a model around a checkpoint is :mod:`biotorch.factory` (``from_pretrained``); building a card folder
from a training run and pushing it is :mod:`biotorch.publish` (``push_to_hub``).

Example::

    >>> biotorch.hub.save_pretrained(model, "out/lenet_fa")                  # model.safetensors + config.json
    >>> biotorch.hub.load_checkpoint(model, "out/lenet_fa/model.safetensors")  # strict, all or nothing
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .convert import feedback_fingerprint
from .files import REPO_ROOT, atomic_write, sha256, write_json
from .version import __version__

WEIGHTS_NAME = "model.safetensors"
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


def save_pretrained(model: nn.Module, folder: PathLike, pretrained_cfg: Optional[dict] = None) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``folder`` (a Hub repo layout); returns it."""
    if not hasattr(model, "biotorch_config"):
        raise ValueError("save_pretrained needs a model from biotorch.create_model (it records arch and rule)")
    folder = Path(folder)
    weights = save_weights(model, folder / WEIGHTS_NAME)
    config = dict(model.biotorch_config)
    config["files"] = {WEIGHTS_NAME: {"sha256": sha256(weights), "size": weights.stat().st_size}}
    if pretrained_cfg is not None:
        config["pretrained_cfg"] = pretrained_cfg
    write_json(folder / CONFIG_NAME, config)
    return folder


def read_checkpoint(path: PathLike, expected_sha256: Optional[str] = None, device=None) -> tuple[dict, dict]:
    """(state_dict, metadata) of a safetensors file, refusing a corrupt, truncated or unexpected file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if expected_sha256 is not None and (actual := sha256(path)) != expected_sha256:
        raise ValueError(f"{path} is not the published file (sha256 {actual[:12]}…, expected "
                         f"{expected_sha256[:12]}…): it is corrupt, truncated or replaced; delete it to re-download")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        state = load_file(str(path), device=str(device) if device is not None else "cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise ValueError(f"{path} is not a readable safetensors checkpoint (corrupt or truncated): {error}") from None
    return state, metadata


def read_checkpoint_metadata(path: PathLike) -> dict:
    """The metadata of a safetensors file (arch, rule, version, feedback fingerprint), reading no tensor."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a readable safetensors checkpoint: {error}") from None


def load_checkpoint(model: nn.Module, path: PathLike, expected_sha256: Optional[str] = None) -> nn.Module:
    """Load ``path`` into ``model`` strictly; on any mismatch raise and leave the model untouched."""
    device = next(model.parameters()).device
    state, metadata = read_checkpoint(path, expected_sha256, device)
    config = getattr(model, "biotorch_config", {})
    for key in ("arch", "rule"):
        if metadata.get(key) and config.get(key) and metadata[key] != config[key]:
            raise ValueError(f"{path} holds a {metadata['arch']}_{metadata['rule']} checkpoint, not "
                             f"{config['arch']}_{config['rule']}")
    expected = model.state_dict()
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong = [f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
             for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path} does not fit this model: "
                         + "; ".join(f"{label}: {', '.join(items[:5])}{' …' if len(items) > 5 else ''}"
                                     for label, items in (("missing", missing), ("unexpected", unexpected),
                                                          ("shape", wrong)) if items))
    before = {k: v.detach().clone() for k, v in expected.items()}
    model.load_state_dict(state, strict=True)  # re-derives feedback from the loaded seeds and steps
    fingerprint = feedback_fingerprint(model)
    if metadata.get("feedback_fingerprint") != fingerprint:
        model.load_state_dict(before, strict=True)
        saved = metadata.get("feedback_fingerprint")
        raise ValueError(f"{path}: the feedback re-derived from its seeds does not match the fingerprint saved "
                         f"with it ({fingerprint[:12]}… vs {saved[:12] + '…' if saved else 'none saved'}): "
                         "it was written by a biotorch whose feedback generator or options differ from this one")
    return model


def _local_folder(cfg) -> Optional[Path]:
    folder = MIRROR / cfg.name
    return folder if (folder / WEIGHTS_NAME).is_file() else None


def resolve_weights(cfg, revision: Optional[str] = None, local_files_only: bool = False,
                    cache_dir: Optional[PathLike] = None) -> Path:
    """Path of a published checkpoint's weights: the clone's ``model_cards/`` mirror, else the Hub cache."""
    folder = _local_folder(cfg)
    if folder is not None and revision is None:
        return folder / WEIGHTS_NAME
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(cfg.hub_id, WEIGHTS_NAME, revision=revision, local_files_only=local_files_only,
                                cache_dir=cache_dir))


def load_weights(model: nn.Module, cfg, checkpoint: Optional[PathLike] = None, revision: Optional[str] = None,
                 local_files_only: bool = False, cache_dir: Optional[PathLike] = None) -> nn.Module:
    """Load published weights (checked against the registry's sha256), or an explicit ``checkpoint``."""
    if checkpoint is not None:
        path = Path(checkpoint)
        return load_checkpoint(model, path / WEIGHTS_NAME if path.is_dir() else path)
    expected = cfg.files.get(WEIGHTS_NAME, {}).get("sha256")
    return load_checkpoint(model, resolve_weights(cfg, revision, local_files_only, cache_dir), expected)


def download_repo(repo_id: str, revision: Optional[str] = None, local_files_only: bool = False) -> Path:
    """The folder of a Hub checkpoint repo (config and weights) in the local HF cache, downloaded if needed."""
    from huggingface_hub import hf_hub_download

    config = hf_hub_download(repo_id, CONFIG_NAME, revision=revision, local_files_only=local_files_only)
    hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, local_files_only=local_files_only)
    return Path(config).parent


def upload_folder(folder: PathLike, repo_id: str, token: Optional[str] = None, private: bool = False,
                  commit_message: Optional[str] = None, revision: Optional[str] = None,
                  endpoint: Optional[str] = None):
    """Push a checkpoint folder to the Hub repo ``repo_id`` in one commit; returns huggingface_hub's ``CommitInfo``."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} is not a checkpoint folder ({WEIGHTS_NAME}, {CONFIG_NAME})")
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
                             commit_message=commit_message or f"Upload {folder.name} with biotorch")
