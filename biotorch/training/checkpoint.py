"""Resumable checkpoints and published weights: safetensors for tensors, JSON for the rest, no pickle.

A run folder holds ``checkpoint/`` (the last epoch, to resume) and ``best.safetensors`` (the model at its
best validation epoch, to publish)::

    checkpoint/model.safetensors      model.state_dict(): forward weights and feedback state
    checkpoint/optimizer.safetensors  optimizer state tensors as state.{param_index}.{name}
    checkpoint/rng.safetensors        torch RNG states (cpu, cuda.N)
    checkpoint/state.json             written last: epoch, step, best, history, param_groups,
                                      scheduler, scaler, python RNG, non-tensor optimizer state

The folder is written under a temporary name and swapped in with renames, so a crash leaves either the
previous checkpoint or the new one, never a mixture.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from ..errors import CheckpointError
from ..files import FolderLock, previous_folder, replace_folder, sha256, write_json
from ..hub import load_checkpoint, read_checkpoint, save_weights

CHECKPOINT = "checkpoint"
_OLD = previous_folder(Path(CHECKPOINT)).name  # the checkpoint being replaced
_FILES = ("model.safetensors", "optimizer.safetensors", "rng.safetensors")


def _plain(value):
    """JSON-ready copy: tensors become numbers or lists (optimizer lr tensors, scheduler base_lrs)."""
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _tensors_to_cpu(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    # A copy per tensor: safetensors refuses tensors that share memory (tied weights, views).
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def _rng_tensors() -> dict[str, Tensor]:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{index}"] = state
    return tensors


def _python_rng() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict, list]:
    full = optimizer.state_dict()
    tensors, extra = {}, {}
    for index, values in full["state"].items():
        for name, value in values.items():
            if isinstance(value, Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                extra.setdefault(str(index), {})[name] = value
    return tensors, _plain(extra), _plain(full["param_groups"])


def save_checkpoint(run_dir, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    scaler=None, state: dict) -> Path:
    """Write ``run_dir/checkpoint`` atomically; ``state`` holds the JSON-ready run state (epoch, ...)."""
    run_dir = Path(run_dir)
    final = run_dir / CHECKPOINT
    tmp = run_dir / f".{CHECKPOINT}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors")
    opt_tensors, opt_extra, param_groups = _optimizer_files(optimizer)
    save_file(_tensors_to_cpu(opt_tensors), str(tmp / "optimizer.safetensors"))
    save_file(_tensors_to_cpu(_rng_tensors()), str(tmp / "rng.safetensors"))
    full_state = dict(state, param_groups=param_groups, optimizer_extra=opt_extra,
                      scheduler=_plain(scheduler.state_dict()),
                      scaler=_plain(scaler.state_dict()) if scaler is not None else None,
                      python_rng=_python_rng())
    full_state["files"] = {name: sha256(tmp / name) for name in _FILES}  # checked on resume
    write_json(tmp / "state.json", full_state)  # last: its presence marks a complete checkpoint
    return replace_folder(tmp, final)


def find_checkpoint(run_dir) -> Optional[Path]:
    """The complete checkpoint folder of ``run_dir`` (the previous one if a swap was interrupted)."""
    for candidate in (Path(run_dir) / CHECKPOINT, Path(run_dir) / _OLD):
        if (candidate / "state.json").is_file():
            return candidate
    return None


# What resume reads from state.json, and its types (float: any finite number; None: null allowed).
_STATE_TYPES = {"epoch": (int,), "global_step": (int,), "best_val": (float,), "best_epoch": (int, None),
                "history": (list,), "alignment": (list,), "train_time_s": (float,), "images_trained": (int,),
                "files": (dict,), "param_groups": (list,), "optimizer_extra": (dict,), "scheduler": (dict,),
                "python_rng": (list,), "started_from": (dict, None)}
_COUNTS = ("epoch", "global_step", "train_time_s", "images_trained")  # never negative


def _is(value, kinds) -> bool:
    """``value`` is one of ``kinds``: int is not bool, float is any finite int or float, None is null."""
    if value is None or isinstance(value, bool):
        return value is None and None in kinds
    if isinstance(value, (int, float)):
        return (int in kinds and isinstance(value, int)) or (float in kinds and math.isfinite(value))
    return any(k is not None and k not in (int, float) and isinstance(value, k) for k in kinds)


def _read_state(folder: Path, epochs: int) -> dict:
    """state.json, checked: the values resume relies on have the right types and fit the recipe."""
    path = folder / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not a readable checkpoint state: {error}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} must hold a JSON object; the checkpoint is damaged or from another program")
    for key, kinds in _STATE_TYPES.items():
        value = state.get(key)
        if not _is(value, kinds) or (key in _COUNTS and value < 0):
            names = " or ".join("null" if k is None else k.__name__ for k in kinds)
            raise CheckpointError(f"{path}: {key!r} must be {names}{' >= 0' if key in _COUNTS else ''}, got "
                                  f"{value!r:.60}; the checkpoint is damaged or from another program")
    if not 0 <= state["epoch"] <= epochs:
        raise CheckpointError(f"{path}: epoch {state['epoch']} is outside this recipe's 0..{epochs}")
    if state["best_epoch"] is not None and not 1 <= state["best_epoch"] <= state["epoch"]:
        raise CheckpointError(f"{path}: best epoch {state['best_epoch']} is not one of the {state['epoch']} trained")
    rows = state["history"]
    if len(rows) != state["epoch"] or not all(isinstance(r, dict) and all(_is(v, (float, None)) for v in r.values())
                                              for r in rows):
        raise CheckpointError(f"{path}: 'history' must hold one row of numbers per trained epoch ({state['epoch']}); "
                              "the checkpoint is damaged or from another program")
    missing = [name for name in _FILES if not isinstance(state["files"].get(name), str)]
    if missing:
        raise CheckpointError(f"{path} records no sha256 for {', '.join(missing)}: cannot verify the checkpoint")
    return state


def restore_checkpoint(folder, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                       scaler=None, device: torch.device, epochs: int) -> dict:
    """Restore everything ``save_checkpoint`` wrote (RNG states included); returns the state dict.

    Every file is checked against the sha256 recorded in state.json before it is read."""
    folder = Path(folder)
    state = _read_state(folder, epochs)
    files = state["files"]
    load_checkpoint(model, folder / "model.safetensors", files["model.safetensors"])
    opt_tensors, _ = read_checkpoint(folder / "optimizer.safetensors", files["optimizer.safetensors"], device)
    rng, _ = read_checkpoint(folder / "rng.safetensors", files["rng.safetensors"])
    per_param: dict[int, dict] = {}
    for key, value in opt_tensors.items():
        _, index, name = key.split(".", 2)
        per_param.setdefault(int(index), {})[name] = value
    for index, values in state["optimizer_extra"].items():
        per_param.setdefault(int(index), {}).update(values)
    tensor_lr = [isinstance(g["lr"], Tensor) for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
        scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{folder}: the optimizer state does not fit this run: {error}") from None
    for group, was_tensor in zip(optimizer.param_groups, tensor_lr):
        if was_tensor and not isinstance(group["lr"], Tensor):  # CUDA graphs read lr from a tensor
            group["lr"] = torch.tensor(group["lr"], device=device)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(rng["cpu"])
    cuda_states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return state


def remove_stale_files(run_dir) -> list[Path]:
    """Delete what killed writes left in ``run_dir`` (temporary files and folders); call it holding the lock."""
    run_dir = Path(run_dir)
    stale = [p for p in run_dir.glob(".*.tmp")] + ([run_dir / _OLD] if (run_dir / CHECKPOINT).is_dir() else [])
    for path in stale:
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    return [p for p in stale if p.name != _OLD]


class RunLock(FolderLock):
    """The lock of a run folder, held for the run's life: a second process is refused at once with the first one's
    pid; the OS releases it when the process ends, so a crashed run never blocks its resume.

    Example::

        >>> with RunLock("runs/lenet_fa"):
        ...     ...                                  # only this process writes the folder
    """

    busy = "one process trains a run folder at a time; wait for it, or choose another --out"
