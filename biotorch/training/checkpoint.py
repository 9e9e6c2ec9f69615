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
import os
import random
import shutil
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..hub import load_checkpoint as load_weights_file, save_weights
from ..files import write_json

CHECKPOINT = "checkpoint"
_OLD = ".checkpoint.old"


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
    final, old = run_dir / CHECKPOINT, run_dir / _OLD
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
    write_json(tmp / "state.json", full_state)  # last: its presence marks a complete checkpoint
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(run_dir) -> Optional[Path]:
    """The complete checkpoint folder of ``run_dir`` (the previous one if a swap was interrupted)."""
    for candidate in (Path(run_dir) / CHECKPOINT, Path(run_dir) / _OLD):
        if (candidate / "state.json").is_file():
            return candidate
    return None


def restore_checkpoint(folder, *, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    scaler=None, device: torch.device) -> dict:
    """Restore everything ``save_checkpoint`` wrote (RNG states included); returns the state dict."""
    folder = Path(folder)
    state = json.loads((folder / "state.json").read_text())
    load_weights_file(model, folder / "model.safetensors")
    opt_tensors = load_file(str(folder / "optimizer.safetensors"), device=str(device))
    per_param: dict[int, dict] = {}
    for key, value in opt_tensors.items():
        _, index, name = key.split(".", 2)
        per_param.setdefault(int(index), {})[name] = value
    for index, values in state["optimizer_extra"].items():
        per_param.setdefault(int(index), {}).update(values)
    tensor_lr = [isinstance(g["lr"], Tensor) for g in optimizer.param_groups]
    optimizer.load_state_dict({"state": per_param, "param_groups": state["param_groups"]})
    for group, was_tensor in zip(optimizer.param_groups, tensor_lr):
        if was_tensor and not isinstance(group["lr"], Tensor):  # CUDA graphs read lr from a tensor
            group["lr"] = torch.tensor(group["lr"], device=device)
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["cpu"])
    cuda_states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[:torch.cuda.device_count()])
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    return state
