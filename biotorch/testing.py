"""The conformance kit of a learning rule: :func:`check_rule` runs on any rule the checks biotorch's own pass.

A rule (:class:`biotorch.Rule`) says what signal a layer sends back and how its feedback changes; everything else
(the weight gradients, saving, DDP, CUDA graphs, export) is biotorch's and must keep working. The kit builds the
rule's LeNet (convolutions, linear layers and an output layer: direct-feedback rules work too), trains it a few
steps (giving it each batch's targets first, :func:`biotorch.set_targets`), and checks:

- ``local_gradients``: every layer's weight and bias gradients are its true local gradients given the signal it
  received (δ at its output: Wgrad = δᵀx), whatever the rule sends back;
- ``feedback_signal``: where the rule sends the signal through a feedback tensor B, the layer's input receives
  exactly δ·B (the transposed convolution by B for a convolution);
- ``bp_when_feedback_is_w``: where the feedback is a tensor of W's shape (``feedback_weight``), setting it to W
  gives backprop's gradients exactly;
- ``round_trip``: ``state_dict`` and ``save_pretrained``/``from_pretrained`` (safetensors) give the same outputs,
  feedback (derived feedback re-derived, its fingerprint checked on load) and gradients, after training steps;
- ``same_seed``: two models of one seed (the DDP ranks) hold the same feedback and take the same steps;
- ``exports``: torch.fx keeps each rule layer whole with the same gradients; TorchScript and ``to_torch`` give the
  same outputs;
- ``in_place``: ``after_step`` and ``after_load`` update feedback in place (a captured CUDA graph reads the same
  memory on every replay).

Example::

    >>> biotorch.testing.check_rule(MyRule)            # RuleCheckError names the first check that fails
    ['local_gradients', 'feedback_signal', ...]
"""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .convert import feedback_step, rule_layers, set_targets, to_torch
from .entrypoints import register_rule
from .factory import create_model
from .hub import save_pretrained
from .nn import learn
from .pretrained import from_pretrained
from .rules import RULES, Rule

__all__ = ["CHECKS", "RuleCheckError", "check_rule"]

CHECKS = ("local_gradients", "feedback_signal", "bp_when_feedback_is_w", "round_trip", "same_seed", "exports",
          "in_place")
_CLASSES, _BATCH, _STEPS = 5, 6, 3


class RuleCheckError(AssertionError):
    """A rule failed a check of the kit; the message names the rule, the check and what differed."""


def _batch(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(_BATCH, 1, 32, 32, generator=g), torch.randint(0, _CLASSES, (_BATCH,), generator=g)


def _model(name: str, seed: int = 3, torch_seed: Optional[int] = None, **options) -> nn.Module:
    torch.manual_seed(seed if torch_seed is None else torch_seed)
    return create_model(f"lenet_{name}", num_classes=_CLASSES, in_chans=1, seed=seed, **options)


def _train(model: nn.Module, steps: int = _STEPS, torch_seed: int = 0) -> nn.Module:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    for step in range(steps):
        torch.manual_seed(torch_seed + step)  # torch's RNG is each rank's own: a rule must not draw from it
        x, y = _batch(100 + step)
        optimizer.zero_grad()
        set_targets(model, y)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        feedback_step(model)
    return model


def _grads(model: nn.Module, seed: int = 7) -> dict[str, Tensor]:
    model.zero_grad()
    x, y = _batch(seed)
    set_targets(model, y)
    F.cross_entropy(model(x), y).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def _close(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def _differ(a: Tensor, b: Tensor) -> str:
    if a.shape != b.shape:
        return f"shapes {tuple(a.shape)} and {tuple(b.shape)}"
    return f"max difference {(a - b).abs().max().item():.3g} (scale {b.abs().max().item():.3g})"


class _Recorder:
    """Each rule layer's input and output of one forward pass, kept for their gradients."""

    def __init__(self, model: nn.Module):
        self.seen: dict[str, tuple[nn.Module, Tensor, Tensor]] = {}
        self.handles = [layer.register_forward_hook(self._hook(name)) for name, layer in rule_layers(model)]

    def _hook(self, name):
        def hook(layer, inputs, output):
            for tensor in (inputs[0], output):
                if tensor.requires_grad:
                    tensor.retain_grad()
            self.seen[name] = (layer, inputs[0], output)
        return hook

    def close(self):
        for handle in self.handles:
            handle.remove()


def _conv_args(layer) -> dict:
    return dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)


def _local_weight_gradient(layer, x: Tensor, delta: Tensor) -> Tensor:
    if isinstance(layer, nn.Linear):
        return delta.reshape(-1, delta.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
    grad = {1: torch.nn.grad.conv1d_weight, 2: torch.nn.grad.conv2d_weight}[x.dim() - 2]
    return grad(x, layer.weight.shape, delta, **_conv_args(layer))


def _signal_through(layer, feedback: Tensor, x: Tensor, delta: Tensor) -> Tensor:
    if isinstance(layer, nn.Linear):
        return delta @ feedback
    grad = {1: torch.nn.grad.conv1d_input, 2: torch.nn.grad.conv2d_input}[x.dim() - 2]
    return grad(x.shape, feedback, delta, **_conv_args(layer))


def _check_gradients(model: nn.Module, fail) -> bool:
    """``local_gradients`` and ``feedback_signal`` on one forward and backward pass; True when some layer sent
    its signal through a feedback tensor."""
    recorder = _Recorder(model)
    x, y = _batch(11)
    x.requires_grad_(True)
    model.zero_grad()
    set_targets(model, y)
    try:
        F.cross_entropy(model(x), y).backward()
    finally:
        recorder.close()
    through_feedback = False
    for layer_name, (layer, inputs, output) in recorder.seen.items():
        delta = output.grad
        if delta is None:
            fail("local_gradients", f"no gradient reached the output of {layer_name}")
        expected = _local_weight_gradient(layer, inputs.detach(), delta)
        if not _close(layer.weight.grad, expected):
            fail("local_gradients", f"{layer_name}.weight's gradient is not its true local gradient δᵀx given the "
                                    f"signal δ its output received: {_differ(layer.weight.grad, expected)}")
        if layer.bias is not None:
            bias = delta.sum(dim=[d for d in range(delta.dim()) if d != (1 if delta.dim() > 2 else delta.dim() - 1)])
            if not _close(layer.bias.grad, bias):
                fail("local_gradients", f"{layer_name}.bias's gradient is not δ summed over the batch: "
                                        f"{_differ(layer.bias.grad, bias)}")
        feedback, direct = layer.rule.signal(layer, inputs.detach())
        if direct is None and feedback is not None and inputs.grad is not None:
            through_feedback = True
            sent = _signal_through(layer, feedback.detach(), inputs.detach(), delta)
            if not _close(inputs.grad, sent):
                fail("feedback_signal", f"the signal reaching {layer_name}'s input is not δ·B for the feedback B "
                                        f"its rule's signal() returns: {_differ(inputs.grad, sent)}")
    return through_feedback


def _check_bp_equivalence(model: nn.Module, fail) -> bool:
    recorder = _Recorder(model)
    with torch.no_grad():
        model(_batch(11)[0])
    recorder.close()
    layers = []
    for layer_name, (layer, inputs, _) in recorder.seen.items():
        feedback, direct = layer.rule.signal(layer, inputs)
        own = getattr(layer, "feedback_weight", None)
        if direct is None and feedback is own and feedback.shape == layer.weight.shape:
            layers.append((layer_name, layer))  # the signal goes through a feedback tensor of W's shape
    if not layers:
        return False
    with torch.no_grad():
        for _, layer in layers:
            layer.feedback_weight.copy_(layer.weight)
    plain = to_torch(model)
    mine, reference = _grads(model), _grads(plain)
    for key, grad in reference.items():
        if not _close(mine[key], grad):
            fail("bp_when_feedback_is_w", f"with feedback_weight = W, {key}'s gradient is not backprop's: "
                                          f"{_differ(mine[key], grad)}")
    return True


def _feedback(model: nn.Module) -> dict[str, Tensor]:
    """Every tensor of the rule layers that is not a forward weight: feedback, seeds, steps, drawn buffers."""
    out = {}
    for layer_name, layer in rule_layers(model):
        for key, value in [*layer.named_buffers(recurse=False), *layer.named_parameters(recurse=False)]:
            if key not in ("weight", "bias") and value is not None:
                out[f"{layer_name}.{key}"] = value.detach().clone()
    return out


def _same(a: dict[str, Tensor], b: dict[str, Tensor]) -> Optional[str]:
    if a.keys() != b.keys():
        return f"tensors {sorted(a.keys() ^ b.keys())} on one side only"
    for key in a:
        if a[key].shape != b[key].shape or not torch.equal(a[key], b[key]):
            return f"{key} differs ({_differ(a[key].float(), b[key].float())})"
    return None


def _check_round_trip(make, fail) -> None:
    model = _train(make())
    x, _ = _batch(5)
    model.eval()
    copy_ = make(seed=99)  # another seed: what the rule derives from the loaded seed must follow it
    copy_.load_state_dict(model.state_dict())
    with tempfile.TemporaryDirectory(prefix="biotorch-kit-") as folder:
        loaded = from_pretrained(Path(save_pretrained(model, Path(folder) / "checkpoint")))
        for how, other in (("state_dict", copy_), ("save_pretrained/from_pretrained", loaded)):
            other.eval()
            with torch.no_grad():
                if not torch.equal(model(x), other(x)):
                    fail("round_trip", f"{how}: the outputs differ after loading")
            problem = _same(_feedback(model), _feedback(other))
            if problem:
                fail("round_trip", f"{how}: the feedback is not restored: {problem} (a buffer the rule derives "
                                   "belongs in `derived` and is re-derived by after_load; one it learns is saved)")
            model.train(), other.train()
            problem = _same(_grads(model), _grads(other))
            if problem:
                fail("round_trip", f"{how}: the gradients after loading differ: {problem}")
            model.eval()


def _check_same_seed(make, fail) -> None:
    """As DDP's ranks: one seed, torch's RNG in another state on each, the forward weights broadcast from rank 0."""
    first, second = make(seed=5, torch_seed=1), make(seed=5, torch_seed=2)
    with torch.no_grad():
        for a, b in zip(first.modules(), second.modules()):
            for key in ("weight", "bias"):
                if isinstance(getattr(a, key, None), Tensor):
                    getattr(b, key).copy_(getattr(a, key))
    for when in ("built", f"{_STEPS} steps"):
        problem = _same(_feedback(first), _feedback(second)) or _same(_grads(first), _grads(second))
        if problem:
            fail("same_seed", f"two models of one seed (as DDP's ranks) differ once {when}: {problem}; feedback must "
                              "come from the layer's seed (biotorch.rules.counter_uniform), not from torch's RNG")
        first, second = _train(first, torch_seed=10), _train(second, torch_seed=20)


def _check_exports(model: nn.Module, fail) -> None:
    model.train()
    traced = torch.fx.symbolic_trace(model)
    calls = sum(node.target is learn for node in traced.graph.nodes)
    if calls != len(list(rule_layers(model))):
        fail("exports", f"torch.fx traced {calls} rule-layer calls for {len(list(rule_layers(model)))} rule layers")
    problem = _same(_grads(model), _grads(traced))
    if problem:
        fail("exports", f"the fx-traced model's gradients differ: {problem}")
    x, _ = _batch(9)
    model.eval()
    with torch.no_grad(), torch.jit.optimized_execution(False):
        reference = model(x)
        for how, other in (("TorchScript", torch.jit.script(model)), ("to_torch", to_torch(model))):
            if not torch.allclose(other(x), reference, atol=1e-6):
                fail("exports", f"{how} gives other outputs")
    model.train()


def _addresses(model: nn.Module) -> dict[str, int]:
    return {k: t.data_ptr() for k, t in [*model.named_parameters(), *model.named_buffers()] if t is not None
            and t.numel()}


def _check_in_place(make, fail) -> None:
    model = _train(make(), steps=1)  # feedback drawn at the first forward (dfa) exists now
    before = _addresses(model)
    feedback_step(model)
    model.load_state_dict(model.state_dict())  # after_load
    after = _addresses(model)
    moved = sorted(k for k in before if after.get(k) != before[k])
    if moved:
        fail("in_place", f"{', '.join(moved)} moved in memory in after_step/after_load: update feedback in place "
                         "(copy_, mul_, add_), so that a captured CUDA graph keeps reading it")


def check_rule(rule: Union[type[Rule], str], **options) -> list[str]:
    """Run the kit on ``rule`` (a Rule subclass, registered here if it is not yet, or a registered name) with its
    ``options``; returns the checks that ran (those that do not apply to the rule are left out:
    ``feedback_signal`` for a rule that sends no feedback tensor, ``bp_when_feedback_is_w`` for one without a
    ``feedback_weight`` of W's shape). Raises :class:`RuleCheckError` at the first failure.

    Example::

        >>> biotorch.testing.check_rule("fa")[:3]
        ['local_gradients', 'feedback_signal', 'bp_when_feedback_is_w']
    """
    if isinstance(rule, str):
        if rule not in RULES:
            raise ValueError(f"unknown rule {rule!r}: pass the Rule subclass (the kit registers it) or one of "
                             f"{', '.join(RULES)}")
        cls = RULES[rule]
    else:
        cls = register_rule(rule)
    name = cls.name

    def fail(check: str, message: str):
        raise RuleCheckError(f"rule {name!r} fails {check}: {message}")

    make = functools.partial(_model, name, **options)
    ran = ["local_gradients"]
    if _check_gradients(_train(make()), fail):
        ran.append("feedback_signal")
    if _check_bp_equivalence(_train(make()), fail):
        ran.append("bp_when_feedback_is_w")
    _check_round_trip(make, fail)
    _check_same_seed(make, fail)
    _check_exports(_train(make()), fail)
    _check_in_place(make, fail)
    return ran + ["round_trip", "same_seed", "exports", "in_place"]
