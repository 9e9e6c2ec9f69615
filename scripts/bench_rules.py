"""Training-step time and memory of every learning rule relative to bp, measured in one process.

A step is zero_grad → forward → cross-entropy → backward → SGD step → ``biotorch.feedback_step``.
Rules are interleaved round by round (so drift in machine load hits all of them alike) and the median
step time is reported. Memory: on CUDA the peak allocated during a step; on CPU the bytes of tensors saved
for backward plus the model's parameters, buffers, gradients and optimizer state (CPU has no allocator peak).

    python scripts/bench_rules.py                       # ResNet-20 (batch 128) and LeNet on CPU (+ CUDA)
    python scripts/bench_rules.py --models lenet --rounds 30 --device cpu
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import biotorch

TARGETS = {"bp": 1.0, "fa": 1.03, "usf": 1.03, "brsf": 1.03, "frsf": 1.03, "kp": 1.03, "wm": 1.15, "dfa": 1.0}
SHAPES = {"resnet20": dict(in_chans=3, batch=128), "lenet": dict(in_chans=1, batch=128)}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _state_bytes(model, opt):
    tensors = [*model.parameters(), *model.buffers(), *(p.grad for p in model.parameters() if p.grad is not None)]
    tensors += [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return sum(t.numel() * t.element_size() for t in tensors)


class _SavedBytes(torch.autograd.graph.saved_tensors_hooks):
    def __init__(self):
        self.storages = {}
        super().__init__(self.pack, lambda t: t)

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor


def make_step(name, batch, device, amp):
    torch.manual_seed(0)
    model = biotorch.create_model(name, **({"in_chans": 1} if name.startswith("lenet") else {})).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, *model.default_input_size, device=device)
    y = torch.randint(0, model.num_classes, (batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        biotorch.feedback_step(model)

    def memory():
        step()
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
            step()
            _sync(device)
            return torch.cuda.max_memory_allocated(device)
        saved = _SavedBytes()
        with saved:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
        return sum(saved.storages.values()) + _state_bytes(model, opt)

    return step, memory


def bench(arch, device, rounds, warmup, amp):
    batch = SHAPES[arch]["batch"]
    steps, memories = {}, {}
    for rule in biotorch.RULES:
        steps[rule], memory = make_step(f"{arch}_{rule}", batch, device, amp)
        memories[rule] = memory()
        for _ in range(warmup):
            steps[rule]()
    times = {rule: [] for rule in steps}
    for r in range(rounds):
        order = list(steps) if r % 2 == 0 else list(reversed(steps))
        for rule in order:
            _sync(device)
            start = time.perf_counter()
            steps[rule]()
            _sync(device)
            times[rule].append(time.perf_counter() - start)
    median = {rule: statistics.median(t) for rule, t in times.items()}
    print(f"\n{arch}, batch {batch}, {device}{' bf16' if amp else ''}, {rounds} interleaved rounds, "
          f"{torch.get_num_threads()} threads")
    print(f"{'rule':<6}{'step ms':>10}{'time/bp':>9}{'target':>8}{'memory MB':>11}{'mem/bp':>8}")
    for rule in steps:
        ratio = median[rule] / median["bp"]
        flag = "" if ratio <= TARGETS[rule] else "  over target"
        print(f"{rule:<6}{median[rule] * 1e3:>10.1f}{ratio:>9.3f}{TARGETS[rule]:>8.2f}"
              f"{memories[rule] / 2**20:>11.1f}{memories[rule] / memories['bp']:>8.3f}{flag}")
    return median, memories


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--device", nargs="+", default=None, help="default: cpu, and cuda when present")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    args = parser.parse_args()
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    for device in devices:
        for arch in args.models:
            bench(arch, torch.device(device), args.rounds, args.warmup, args.amp)


if __name__ == "__main__":
    main()
