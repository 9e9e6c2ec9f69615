"""Checkpoints as Hugging Face Hub repos: ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

A checkpoint folder *is* a Hub repo: ``model.safetensors`` (forward weights and the feedback state needed to
keep training with the same rule; its metadata names arch, rule and biotorch version), ``config.json``
(architecture, rule and options, classes, channels, pretrained metadata), ``README.md`` (the model card) and
the training record. Weights are looked up in order: an explicit local folder, this clone's
``model_cards/`` mirror, then the Hub (``hf_hub_download``: cached, ``revision``, offline mode).

Example::

    >>> biotorch.save_pretrained(model, "out/lenet_fa")
    >>> model = biotorch.from_pretrained("out/lenet_fa")                         # a folder
    >>> model = biotorch.from_pretrained("hf-hub:biotorch/lenet_fa.fashion_mnist")
    >>> biotorch.push_to_hub("out/lenet_fa", "me/lenet_fa.fashion_mnist")
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .convert import feedback_fingerprint

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
HUB_ORG = "biotorch"
REPO_ROOT = Path(__file__).resolve().parent.parent
MIRROR = REPO_ROOT / "model_cards"  # the offline mirror of the Hub inside a clone of this repository

PathLike = Union[str, os.PathLike]


def sha256(path: PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then rename onto ``path``: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes private files; checkpoints and cards are meant to be read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


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
    from . import __version__

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
    atomic_write(folder / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))
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


def resolve_weights(cfg, revision: Optional[str] = None, local_files_only: bool = False) -> Path:
    """Path of a published checkpoint's weights: the clone's ``model_cards/`` mirror, else the Hub cache."""
    folder = _local_folder(cfg)
    if folder is not None and revision is None:
        return folder / WEIGHTS_NAME
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(cfg.hub_id, WEIGHTS_NAME, revision=revision, local_files_only=local_files_only))


def load_weights(model: nn.Module, cfg, checkpoint: Optional[PathLike] = None,
                 revision: Optional[str] = None, local_files_only: bool = False) -> nn.Module:
    """Load published weights (checked against the registry's sha256), or an explicit ``checkpoint``."""
    if checkpoint is not None:
        path = Path(checkpoint)
        return load_checkpoint(model, path / WEIGHTS_NAME if path.is_dir() else path)
    expected = cfg.files.get(WEIGHTS_NAME, {}).get("sha256")
    return load_checkpoint(model, resolve_weights(cfg, revision, local_files_only), expected)


def _download_repo(repo_id: str, revision: Optional[str], local_files_only: bool) -> Path:
    from huggingface_hub import hf_hub_download

    config = hf_hub_download(repo_id, CONFIG_NAME, revision=revision, local_files_only=local_files_only)
    hf_hub_download(repo_id, WEIGHTS_NAME, revision=revision, local_files_only=local_files_only)
    return Path(config).parent


def from_pretrained(name_or_path: PathLike, device=None, revision: Optional[str] = None,
                    local_files_only: bool = False, num_classes: Optional[int] = None) -> nn.Module:
    """A model with weights, from a checkpoint folder, ``hf-hub:<org>/<repo>``, or a registered name.

    Example::

        >>> model = biotorch.from_pretrained("lenet_fa.fashion_mnist", device="cpu")
    """
    from .registry import create_model

    text = str(name_or_path)
    if text.startswith("hf-hub:"):
        folder = _download_repo(text[len("hf-hub:"):], revision, local_files_only)
    elif Path(text).is_dir():
        folder = Path(text)
    else:  # a registered name: its published weights (mirror, then Hub at ``revision``)
        from .registry import get_pretrained_cfg

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
    except (KeyError, TypeError, json.JSONDecodeError) as error:
        raise ValueError(f"{config_path} is not a valid biotorch config: {error!r}") from None
    model = create_model(name, device=device, **build)
    if "pretrained_cfg" in config:
        model.pretrained_cfg = config["pretrained_cfg"]
    expected = config.get("files", {}).get(WEIGHTS_NAME, {}).get("sha256")
    load_checkpoint(model, folder / WEIGHTS_NAME, expected)
    if num_classes is not None and num_classes != config["num_classes"]:
        model.reset_classifier(num_classes)
    return model


def push_to_hub(folder: PathLike, repo_id: str, token: Optional[str] = None, private: bool = False,
                commit_message: Optional[str] = None, revision: Optional[str] = None,
                endpoint: Optional[str] = None):
    """Publish a checkpoint folder (or a training run, whose card folder is built first) in one commit.

    Returns huggingface_hub's ``CommitInfo``.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if (folder / "best.safetensors").is_file() and (folder / "metrics.json").is_file():  # a training run
        from .publish import build_card_folder

        with tempfile.TemporaryDirectory(prefix="biotorch-push-") as staging:
            card = build_card_folder([folder], Path(staging) / repo_id.split("/")[-1], hub_org=repo_id.split("/")[0])
            return push_to_hub(card, repo_id, token, private, commit_message, revision, endpoint)
    if not (folder / WEIGHTS_NAME).is_file() or not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} is neither a checkpoint folder ({WEIGHTS_NAME}, {CONFIG_NAME}) nor a "
                                "finished training run (best.safetensors, metrics.json)")
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", revision=revision,
                             commit_message=commit_message or f"Upload {folder.name} with biotorch")
