"""How well feedback aligns with the forward weights and the rule's updates with the true gradient.

Example::

    >>> biotorch.alignment(model)["layer1.0.conv1"]
    {'rule': 'fa', 'angle': 83.1, 'norm_ratio': 1.02}
    >>> biotorch.gradient_alignment(model, lambda m: F.cross_entropy(m(x), y))["fc"]
    0.97
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .convert import exact_gradients, rule_layers, set_targets


def _angle(a: Tensor, b: Tensor) -> float:
    cos = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0)
    return math.degrees(math.acos(max(-1.0, min(1.0, cos.item()))))


@torch.no_grad()
def alignment(model: nn.Module) -> dict[str, dict]:
    """Per layer: the angle in degrees between W and the feedback its backward uses, and ‖B‖/‖W‖.

    The layers of direct rules (dfa, drtp, sdfa) are left out: their feedback maps the output, it has no W-shaped
    counterpart.
    """
    result = {}
    for name, layer in rule_layers(model):
        if layer.rule.direct:
            continue
        feedback, _ = layer.rule.signal(layer, None)
        w = layer.weight
        result[name] = {"rule": layer.rule.name, "angle": _angle(w, feedback),
                        "norm_ratio": (feedback.norm() / w.norm()).item()}
    return result


def gradient_alignment(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor],
                       targets: Optional[Tensor] = None) -> dict[str, float]:
    """Per layer: cosine between the rule's weight gradient and the true gradient on the same batch.

    ``loss_fn(model)`` must compute the loss of one fixed batch; it runs twice (rule, then exact) with the
    model's buffers (e.g. BatchNorm statistics) restored afterwards; existing ``.grad`` are untouched. Frozen
    weights (``requires_grad=False``) are measured too: the update their rule would give them. ``targets``: the
    batch's, for the rules that learn from them (drtp; :func:`biotorch.set_targets` before each pass).
    """
    layers = list(rule_layers(model))
    weights = [layer.weight for _, layer in layers]
    frozen = [w for w in weights if not w.requires_grad]
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        for weight in frozen:
            weight.requires_grad_(True)
        if targets is not None:
            set_targets(model, targets)
        rule_grads = torch.autograd.grad(loss_fn(model), weights, allow_unused=True)
        with exact_gradients(model):
            if targets is not None:
                set_targets(model, targets)
            true_grads = torch.autograd.grad(loss_fn(model), weights, allow_unused=True)
    finally:
        for weight in frozen:
            weight.requires_grad_(False)
        model.load_state_dict(saved)
    return {name: float("nan") if g is None or t is None else
            torch.nn.functional.cosine_similarity(g.flatten().double(), t.flatten().double(), dim=0).item()
            for (name, _), g, t in zip(layers, rule_grads, true_grads)}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(forward parameters, feedback numbers the rule holds, whether saved or re-derived) of a model."""
    forward = sum(p.numel() for n, p in model.named_parameters() if "feedback_" not in n)
    feedback = sum(t.numel() for n, t in [*model.named_buffers(), *model.named_parameters()]
                   if n.rpartition(".")[2].startswith("feedback_") and t.is_floating_point())
    return forward, feedback
