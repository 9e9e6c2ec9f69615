"""Apply a learning rule to any torch.nn model, and the calls that go with a converted model.

Example::

    >>> model = biotorch.convert(torchvision.models.resnet18(num_classes=10), rule="fa", exclude=["fc"])
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=5e-4)  # kp's B is in parameters()
    >>> loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
    >>> biotorch.feedback_step(model)    # after every optimizer step: brsf redraws, wm mirrors; no-op else
    >>> plain = biotorch.to_torch(model)  # the inverse: torch.nn layers, same forward, for export
"""
from __future__ import annotations

import contextlib
import copy
import fnmatch
import functools
import hashlib
import warnings
from typing import Iterable, Iterator, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .nn import LAYERS, RuleLayer
from .rules import OutputError, Rule, make_rule, rule_module

# Modules whose own parameters learn from their exact local gradient under every rule.
_LOCAL = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.Embedding, nn.PReLU)
if hasattr(nn, "RMSNorm"):
    _LOCAL = (*_LOCAL, nn.RMSNorm)


def rule_layers(model: nn.Module) -> Iterator[tuple[str, RuleLayer]]:
    """(name, layer) for every layer of ``model`` that learns with a rule."""
    return ((n, m) for n, m in model.named_modules() if isinstance(m, RuleLayer))


def _excluded(name: str, patterns: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") or fnmatch.fnmatchcase(name, p) for p in patterns)


def convert(model: nn.Module, rule: Union[str, Rule], *, exclude: Iterable[str] = (), strict: bool = False,
            seed: int = 0, num_classes: Optional[int] = None, verbose: bool = False, **rule_options) -> nn.Module:
    """Make every ``Linear``/``Conv1d``/``Conv2d`` of ``model`` learn with ``rule``, in place; returns ``model``.

    The forward pass and the forward weights (the same Parameter objects) are kept. Layers already
    converted get the new rule. Create the optimizer *after* converting (kp adds parameters).

    Args:
        rule: one of ``biotorch.RULES`` (bp, fa, dfa, usf, brsf, frsf, wm, kp, drtp, and the registered ones).
        exclude: module names or glob patterns to leave on exact backprop, e.g. ``["fc"]``.
        strict: raise if a module holds parameters that no rule covers (e.g. ``nn.MultiheadAttention``'s
            packed projections), instead of warning.
        seed: feedback of the i-th converted layer is drawn from ``layer_seed(seed, i)``.
        num_classes: direct rules (dfa, drtp) only: size of the output error; default the outputs of the model's output layer
            (timm's ``get_classifier()``, else the last Linear), where the error is captured.
        **rule_options: options of the rule (``biotorch.RULES[rule].options``).
    """
    if type(model) in LAYERS:
        raise ValueError("biotorch.convert takes a model; for a single layer use biotorch.nn.Linear/Conv2d "
                         "or layer.set_rule(rule)")
    rule_obj = make_rule(rule, **rule_options)
    exclude = [exclude] if isinstance(exclude, str) else list(exclude)
    unsupported = [name for name, m in model.named_modules()
                   if type(m) not in LAYERS and not isinstance(m, _LOCAL) and not _excluded(name, exclude)
                   and any(True for _ in m.parameters(recurse=False))]
    if unsupported:
        message = (f"biotorch.convert: these modules have parameters no rule covers and will learn by exact "
                   f"backprop: {', '.join(unsupported)}. Pass exclude=[...] to accept that explicitly.")
        if strict:
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)

    targets = [(name, m) for name, m in model.named_modules()
               if type(m) in LAYERS and not _excluded(name, exclude)]
    for index, (name, _) in enumerate(targets):
        convert_layer(model, name, rule_obj, layer_seed(seed, index))
    _attach_output_error(model, num_classes)
    config = model.__dict__.setdefault("biotorch_config", {})
    config.update(rule=rule if isinstance(rule, str) else rule_obj.name, seed=seed,
                  rule_options=dict(rule_options) if isinstance(rule, str) else
                  {k: getattr(rule_obj, k) for k in rule_obj.options})
    config.pop("rule_module", None)
    if rule_module(rule_obj):  # a rule defined outside biotorch: a checkpoint names where it comes from
        config["rule_module"] = rule_module(rule_obj)
    if exclude:
        config["exclude"] = exclude
    if callable(getattr(model, "reset_classifier", None)) and not isinstance(model, _RuleHead):
        model.__class__ = _with_rule_head(type(model))
    if verbose:
        print(summary(model))
    return model


def layer_seed(seed: int, index: int) -> int:
    """The seed of the feedback of a model's ``index``-th converted layer (:data:`NEW_HEAD`: a head made later by
    ``reset_classifier``), for the model's ``seed``."""
    return seed * 10007 + index


NEW_HEAD = 9999  # layer_seed's index for a head made by reset_classifier


class _RuleHead:
    """Mixed into the class of a converted model that has timm's ``reset_classifier`` (as
    ``torch.nn.utils.parametrize`` injects a class): the new head learns with the model's rule, and feedback
    shaped by the number of classes (dfa) is redrawn for it."""

    def reset_classifier(self, num_classes: int, *args, label_names: Optional[Sequence[str]] = None,
                         **kwargs) -> None:
        """timm's ``reset_classifier``; ``label_names`` names the new head's classes (``biotorch_config``, which
        ``save_pretrained`` writes; ``pretrained_cfg`` stays the checkpoint's, as in timm)."""
        if label_names is not None and len(label_names) != num_classes:
            raise ValueError(f"reset_classifier: {len(label_names)} label_names for num_classes={num_classes}")
        super().reset_classifier(num_classes, *args, **kwargs)
        config = self.biotorch_config
        config["label_names"] = list(label_names) if label_names is not None else None
        head = self.get_classifier()
        name = next((n for n, m in self.named_modules() if m is head), None)
        if type(head) in LAYERS and name and not _excluded(name, config.get("exclude", ())):
            convert_layer(self, name, config["rule"], layer_seed(config["seed"], NEW_HEAD), **config["rule_options"])
        config["num_classes"] = num_classes
        redraw_feedback(self, num_classes)  # no-op unless some layer learns by direct feedback
        draw_feedback(self)


@functools.lru_cache(maxsize=None)
def _with_rule_head(cls: type) -> type:
    return type(cls.__name__, (_RuleHead, cls), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                                  "__doc__": cls.__doc__})


@torch.no_grad()
def draw_feedback(model: nn.Module) -> None:
    """Draw now the feedback that is shaped by each layer's input (dfa, drawn at the first forward), by one dry
    forward of ``model.default_input_size``, so that it exists (and is identical on every DDP rank) before
    training starts; a model without ``default_input_size`` draws it at its first forward."""
    size = getattr(model, "default_input_size", None)
    if size is not None and any(layer.rule.drawn_at_first_forward for _, layer in rule_layers(model)):
        was_training = model.training
        param = next(model.parameters())
        model.eval()(torch.zeros(1, *size, device=param.device, dtype=param.dtype))
        model.train(was_training)


def convert_layer(model: nn.Module, name: str, rule: Union[str, Rule], seed: int, **rule_options) -> nn.Module:
    """Make the ``Linear``/``Conv`` called ``name`` in ``model`` learn with ``rule`` (its own Parameters are
    kept); returns the new layer. Call :func:`redraw_feedback` afterwards when the model learns by dfa."""
    module = model.get_submodule(name)
    if isinstance(module, RuleLayer):
        module.set_rule(rule, seed, **rule_options)
        return module
    layer = LAYERS[type(module)].from_module(module, rule, seed, **rule_options)
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, layer)
    return layer


def _output_layer(model: nn.Module) -> Optional[nn.Module]:
    """The layer whose output is the model's output: timm's ``get_classifier()`` (None for a model without
    a head), else the last Linear."""
    if callable(getattr(model, "get_classifier", None)):
        head = model.get_classifier()
        return None if isinstance(head, nn.Identity) else head
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("direct feedback (dfa, drtp) starts at the model's output layer, its last Linear (or timm's "
                         "get_classifier()); this model has none")
    return linears[-1]


def _attach_output_error(model: nn.Module, num_classes: Optional[int]) -> None:
    layers = [m for _, m in rule_layers(model)]
    for layer in layers:
        layer.output_error, layer.captures_output_error = None, False
    dfa_layers = [m for m in layers if m.rule.direct]
    if not dfa_layers:
        return
    output = _output_layer(model)
    if output is None:  # no head yet: the dfa layers get their context with one (redraw_feedback)
        return
    if not isinstance(output, RuleLayer):
        name = next(n for n, m in model.named_modules() if m is output)
        raise ValueError(f"direct feedback (dfa, drtp) starts at the model's output layer {name!r}, so it must be "
                         "converted too: do not exclude it (its weight gradient is the same under every rule)")
    context = OutputError(output.weight.shape[0] if num_classes is None else num_classes)
    output.output_error, output.captures_output_error = context, True
    for layer in dfa_layers:
        layer.output_error = context


def set_targets(model: nn.Module, targets: Tensor) -> None:
    """Give the rules of ``model`` the targets of the batch about to go forward: class indices (batch,) or a
    (batch, classes) tensor. Rules that learn from the targets (drtp) read them in the backward of that forward
    pass; the others ignore them. Call it before each forward pass that is trained (biotorch's trainer does).

    Example::

        >>> biotorch.set_targets(model, y)
        >>> F.cross_entropy(model(x), y).backward()
    """
    for _, layer in rule_layers(model):
        if layer.output_error is not None:  # one context per model: every direct layer shares it
            layer.output_error.current.targets = targets
            return


def to_torch(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in plain torch.nn, the inverse of :func:`convert`: every rule layer back to its
    torch.nn type with the same forward weights; feedback and rules are dropped. The forward pass is the same,
    so the copy is what to export (ONNX, TorchScript, ``torch.export``).

    Example::

        >>> plain = biotorch.to_torch(biotorch.create_model("resnet20_fa")).eval()
        >>> torch.onnx.export(plain, torch.randn(1, 3, 32, 32), "resnet20.onnx")
    """
    plain = copy.deepcopy(model)
    plain.__dict__.pop("biotorch_config", None)  # the rule, and
    if isinstance(plain, _RuleHead):  # a head that learns by it
        plain.__class__ = type(plain).__bases__[1]
    torch_types = {biotorch_type: torch_type for torch_type, biotorch_type in LAYERS.items()
                   if torch_type is not biotorch_type}
    for name, layer in list(rule_layers(plain)):
        torch_type = torch_types[type(layer)]
        module = torch_type(**layer._constructor_args(layer), bias=layer.bias is not None, device="meta")
        module.weight, module.bias = layer.weight, layer.bias
        module.train(layer.training)
        if not name:
            return module
        parent, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent), child, module)
    return plain


def feedback_step(model: nn.Module) -> None:
    """Update feedback after ``optimizer.step()``: brsf redraws its magnitudes, wm runs its mirror step.

    Call it on every DDP rank (it is deterministic, so feedback stays identical across ranks).
    """
    for _, layer in rule_layers(model):
        if layer.rule.stateful and not layer.exact:
            layer.rule.after_step(layer)


def redraw_feedback(model: nn.Module, num_classes: Optional[int] = None) -> None:
    """Redraw dfa feedback at the next forward (after a new head or input size), for ``num_classes`` outputs
    (default: the output layer's).

    Also attaches dfa layers added since conversion (e.g. a new head) to the model's output error.
    """
    _attach_output_error(model, num_classes)
    for _, layer in rule_layers(model):
        layer.rule.discard(layer)


def feedback_fingerprint(model: nn.Module) -> str:
    """sha256 of the feedback the layers derive from (seed, step) rather than store (``rule.derived``).

    Saved with the weights and checked after loading, so a changed generator or option fails loudly
    instead of silently training with a different B.
    """
    digest = hashlib.sha256()
    for name, layer in rule_layers(model):
        for buffer_name in layer.rule.derived:
            tensor = getattr(layer, buffer_name, None)
            if tensor is None:
                continue
            values = tensor.detach().to("cpu", torch.float32).contiguous()
            digest.update(f"{name}.{buffer_name}{tuple(values.shape)};".encode())
            digest.update(values.numpy().tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def exact_gradients(model: nn.Module):
    """Temporarily backpropagate exactly through every converted layer (probes, white-box attacks).

    Example::

        >>> with biotorch.exact_gradients(model):
        ...     x.requires_grad_(); model(x).sum().backward()   # x.grad is the true input gradient
    """
    layers = [layer for _, layer in rule_layers(model)]
    previous = [layer.exact for layer in layers]
    for layer in layers:
        layer.exact = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous):
            layer.exact = was


def summary(model: nn.Module) -> str:
    """A table of the layers that learn with a rule and the modules left on exact backprop."""
    rows = [(name, type(m).__name__, str(m.rule), "x".join(map(str, m.weight.shape)))
            for name, m in rule_layers(model)]
    others = [name for name, m in model.named_modules()
              if not isinstance(m, RuleLayer) and any(True for _ in m.parameters(recurse=False))]
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'type':<7} {'rule':<28} weight"]
    lines += [f"{n:<{width}}  {t:<7} {r:<28} {s}" for n, t, r, s in rows]
    lines.append(f"{len(rows)} layers learn with a rule; exact backprop (local gradients) for: "
                 f"{', '.join(others) if others else 'none'}")
    return "\n".join(lines)
