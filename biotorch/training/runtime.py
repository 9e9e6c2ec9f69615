"""What a training process sets up before any run: the device, determinism, the torchrun process group.

Example::

    >>> device = resolve_device("auto")          # cuda:LOCAL_RANK when a GPU is there, else cpu
    >>> configure_determinism(True)
    >>> resolve_amp("auto", torch.device("cpu"))   # ('bf16', 'this CPU has avx512_bf16') on a CPU with bf16 units
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


class Distributed:
    """Rank and world size from torchrun's environment; initialises the process group when WORLD_SIZE > 1."""

    def __init__(self, device: torch.device):
        self.world_size = int(os.environ.get("WORLD_SIZE", 1))
        self.rank = int(os.environ.get("RANK", 0))
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        self.owns_group = False
        if self.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.owns_group = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, tensor: Tensor) -> Tensor:
        if self.world_size > 1:
            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        name = f"cuda:{local_rank}"
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"recipe key 'device' is {name!r} but torch sees no CUDA device; use device: cpu")
    return device


def configure_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic


def _cpu_bf16_units() -> list[str]:
    # torch.cpu's probes of cpuinfo; absent from some builds, where the answer is "none found"
    probes = (("AMX", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    return [unit for unit, probe in probes if getattr(torch.cpu, probe, lambda: False)()]


def resolve_amp(amp: str, device: torch.device) -> tuple[str, str]:
    """The autocast precision a run trains in, and why (for its log). ``amp: auto`` is the fastest this device
    has, as measured (scripts/bench_train.py): bf16 on a CPU with bf16 matrix units (AMX, avx512_bf16) or a GPU
    that computes in bf16, fp32 (``none``) elsewhere."""
    if amp != "auto":
        return amp, "the recipe's amp"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", f"amp auto: {torch.cuda.get_device_name(device)} computes in bf16"
        return "none", f"amp auto: {torch.cuda.get_device_name(device)} has no bf16: fp32"
    units = _cpu_bf16_units()
    if units:
        return "bf16", f"amp auto: this CPU has {' and '.join(units)}"
    return "none", "amp auto: this CPU has no bf16 matrix units (AMX, avx512_bf16): fp32"
