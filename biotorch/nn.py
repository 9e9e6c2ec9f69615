"""Drop-in ``Linear``, ``Conv1d`` and ``Conv2d`` whose backward follows a learning rule.

They are torch.nn's layers (same arguments, same forward, same state) plus a ``rule``. The rule's feedback
state lives in buffers named ``feedback_*`` (in the state_dict, moved by ``.to()``, not in
``parameters()``), except kp's ``feedback_weight``, a parameter that any optimizer updates like W.

``torch.fx`` records a layer as one call of :func:`learn` (the rule's backward survives tracing), and
``torch.jit.script`` compiles the plain torch.nn forward: scripted models are for inference, where every
rule computes the same function.

Example::

    >>> layer = biotorch.nn.Conv2d(3, 16, 3, padding=1, rule="usf")
    >>> layer(torch.randn(2, 3, 8, 8)).shape
    torch.Size([2, 16, 8, 8])
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import functional
from .rules import Rule, make_rule


@torch.fx.wrap
def learn(layer: "RuleLayer", input: Tensor) -> Tensor:
    """``layer``'s forward pass through its rule's autograd Function, and, on the model's output layer, the
    capture of the output error for dfa. One opaque call for ``torch.fx``: tracing into it would record the
    plain forward ops and lose the rule's backward."""
    output = layer.forward_with_rule(input)
    return layer.output_error.capture(output) if layer.captures_output_error else output


class RuleLayer:
    """Mixin that gives a torch.nn layer a learning rule (``rule``, a :class:`biotorch.rules.Rule`).

    ``exact`` (set by ``biotorch.exact_gradients``) makes it backpropagate exactly without touching its
    feedback. ``output_error`` is the model's dfa context (``biotorch.convert`` sets it) and
    ``captures_output_error`` marks the model's output layer, whose output's gradient is that error.
    """

    # (no class annotations: TorchScript reads them as types, and these attributes are not for it)
    __jit_ignored_attributes__ = ("rule", "output_error")
    exact = False
    output_error = None
    captures_output_error = False

    def set_rule(self, rule: Union[str, Rule], seed: int = 0, **rule_options) -> None:
        """Replace the rule, dropping the old feedback state and drawing the new one from ``seed``."""
        for name in [n for n in (*self._buffers, *self._parameters) if n.startswith("feedback_")]:
            delattr(self, name)
        self.rule = make_rule(rule, **rule_options)
        try:
            self.rule.setup(self, seed)
        except Exception as error:
            if not self.weight.is_meta:
                raise
            # a first rule's usual mistake, which the meta device reports as an unrelated 30-line traceback
            raise RuntimeError(f"rule {self.rule.name!r}: setup failed on the meta device ({type(error).__name__}: "
                               f"{error}); biotorch builds models there (biotorch list, checkpoint checks) before "
                               "allocating them, so setup must make tensors with tensor operations and never read "
                               "their values on the host (int(t), float(t), t.item(), t.tolist())") from None

    def _signal(self, input: Tensor):
        return (self.weight.detach(), None) if self.exact else self.rule.signal(self, input)

    @classmethod
    def from_module(cls, module: nn.Module, rule: Union[str, Rule], seed: int = 0, **rule_options):
        """The same layer (its own weight and bias Parameters, not copies) learning with ``rule``."""
        layer = cls(**cls._constructor_args(module), bias=module.bias is not None, device="meta", rule="bp")
        layer.weight, layer.bias = module.weight, module.bias
        layer.train(module.training)
        layer.set_rule(rule, seed, **rule_options)
        return layer

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.rule.after_load(self)  # re-derive the feedback that is not saved (rule.derived)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule!r}"


class Linear(RuleLayer, nn.Linear):
    """``nn.Linear`` learning with ``rule`` (any leading dimensions).

    Example::

        >>> layer = biotorch.nn.Linear(20, 10, rule="fa", seed=0)
        >>> layer(torch.randn(4, 7, 20)).shape
        torch.Size([4, 7, 10])
    """

    def __init__(self, in_features, out_features, bias=True, device=None, dtype=None, *,
                 rule="bp", seed=0, **rule_options):
        super().__init__(in_features, out_features, bias, device, dtype)
        self.set_rule(rule, seed, **rule_options)

    @staticmethod
    def _constructor_args(m):
        return dict(in_features=m.in_features, out_features=m.out_features)

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript is for inference: the plain forward of every rule
            return F.linear(input, self.weight, self.bias)
        return learn(self, input)

    def forward_with_rule(self, input: Tensor) -> Tensor:
        return functional.linear(input, self.weight, self.bias, *self._signal(input))


class _ConvNd(RuleLayer):
    @staticmethod
    def _constructor_args(m):
        return dict(in_channels=m.in_channels, out_channels=m.out_channels, kernel_size=m.kernel_size,
                    stride=m.stride, padding=m.padding, dilation=m.dilation, groups=m.groups,
                    padding_mode=m.padding_mode)

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript is for inference: the plain forward of every rule
            return self._conv_forward(input, self.weight, self.bias)
        return learn(self, input)

    def forward_with_rule(self, input: Tensor) -> Tensor:
        padding = self.padding
        if padding == "valid":
            padding = (0,) * len(self.kernel_size)
        elif self.padding_mode != "zeros" or padding == "same":
            # torch.nn pads explicitly for these too ('same' may be asymmetric); the pad is differentiable.
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0,) * len(self.kernel_size)
        return functional.conv(input, self.weight, self.bias, *self._signal(input),
                               self.stride, padding, self.dilation, self.groups)


class Conv1d(_ConvNd, nn.Conv1d):
    """``nn.Conv1d`` learning with ``rule``."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, rule="bp", seed=0, **rule_options):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.set_rule(rule, seed, **rule_options)


class Conv2d(_ConvNd, nn.Conv2d):
    """``nn.Conv2d`` learning with ``rule`` (stride, padding incl. 'same', dilation, groups, padding modes).

    Example::

        >>> conv = biotorch.nn.Conv2d(3, 16, 3, padding="same", rule="frsf")
        >>> conv(torch.randn(1, 3, 9, 9)).shape
        torch.Size([1, 16, 9, 9])
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", device=None, dtype=None, *, rule="bp", seed=0, **rule_options):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.set_rule(rule, seed, **rule_options)


# torch.nn type → biotorch type, used by biotorch.convert
LAYERS: dict[type, type] = {nn.Linear: Linear, nn.Conv1d: Conv1d, nn.Conv2d: Conv2d,
                            Linear: Linear, Conv1d: Conv1d, Conv2d: Conv2d}
