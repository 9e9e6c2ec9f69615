"""The mathematics: one autograd Function per operation, shared by every learning rule.

``forward`` is the ordinary operation. ``backward`` computes

* the weight and bias gradients: the layer's true local gradients given the signal it received;
* the signal sent to the layer's input, either through ``feedback`` (a tensor of the weight's shape:
  W itself for bp, B for fa, sign(W)·s for usf, ...) or, when ``direct`` is given (dfa), the model's output
  error projected by a fixed matrix. Nothing is ever multiplied by W-transposed and thrown away.

If ``feedback`` requires grad (kp), it receives exactly the weight's gradient, so any optimizer applies
the same update and weight decay to W and B.

Example::

    >>> x, w = torch.randn(4, 3, requires_grad=True), torch.randn(2, 3, requires_grad=True)
    >>> b = torch.randn(2, 3)                       # a feedback matrix
    >>> linear(x, w, None, b).sum().backward()
    >>> torch.allclose(x.grad, torch.ones(4, 2) @ b)
    True
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

# A direct signal maps the shape of the layer's input to the signal that replaces its gradient (dfa).
DirectSignal = Callable[[torch.Size], Tensor]


def _autocast(device_type: str, *tensors: Optional[Tensor]):
    # Custom Functions see autocast only inside their ops; cast once here so that the saved tensors and
    # the backward computation share one dtype, as autocast itself would do for F.linear / F.conv2d.
    if device_type == "meta" or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, feedback, direct):
        input, weight, bias, feedback = _autocast(input.device.type, input, weight, bias, feedback)
        ctx.save_for_backward(input, feedback)
        ctx.direct = direct
        return F.linear(input, weight, bias)

    @staticmethod
    def backward(ctx, grad_output):
        input, feedback = ctx.saved_tensors
        needs_input, needs_weight, needs_bias, needs_feedback, _ = ctx.needs_input_grad
        grad_input = grad_weight = grad_bias = grad_feedback = None
        if needs_input:
            grad_input = (grad_output.matmul(feedback) if ctx.direct is None
                          else ctx.direct(input.shape).to(input.dtype))
        if needs_weight or needs_feedback:
            flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
            grad_weight = flat_grad.t().mm(input.reshape(-1, input.shape[-1]))
            if needs_feedback:  # kp: B gets W's gradient (its own tensor, so in-place edits stay apart)
                grad_feedback = grad_weight.clone()
        if needs_bias:
            grad_bias = grad_output.reshape(-1, grad_output.shape[-1]).sum(0)
        return grad_input, grad_weight if needs_weight else None, grad_bias, grad_feedback, None


class _Conv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, input, weight, bias, feedback, direct, stride, padding, dilation, groups):
        input, weight, bias, feedback = _autocast(input.device.type, input, weight, bias, feedback)
        ctx.save_for_backward(input, weight, feedback)
        ctx.direct = direct
        ctx.conv = (stride, padding, dilation, groups)
        ctx.bias_sizes = None if bias is None else [bias.shape[0]]
        zeros = [0] * len(stride)
        return torch.convolution(input, weight, bias, stride, padding, dilation, False, zeros, groups)

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, feedback = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        needs_input, needs_weight, needs_bias, needs_feedback = ctx.needs_input_grad[:4]
        through_feedback = needs_input and ctx.direct is None
        # The weight gradient only uses the weight's shape, so one call gives the input signal through the
        # feedback tensor and the true local weight gradient.
        grad_input, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_output, input, feedback if through_feedback else weight, ctx.bias_sizes,
            stride, padding, dilation, False, [0] * len(stride), groups,
            [through_feedback, needs_weight or needs_feedback, needs_bias])
        if needs_input and ctx.direct is not None:
            grad_input = ctx.direct(input.shape).to(input.dtype)
        grad_feedback = grad_weight.clone() if needs_feedback else None
        return (grad_input, grad_weight if needs_weight else None, grad_bias, grad_feedback,
                None, None, None, None, None)


def linear(input: Tensor, weight: Tensor, bias: Optional[Tensor], feedback: Optional[Tensor],
           direct: Optional[DirectSignal] = None) -> Tensor:
    """``F.linear`` whose backward sends ``grad_output @ feedback`` (or ``direct(input.shape)``) to the input."""
    return _Linear.apply(input, weight, bias, feedback, direct)


def conv(input: Tensor, weight: Tensor, bias: Optional[Tensor], feedback: Optional[Tensor],
         direct: Optional[DirectSignal], stride: Sequence[int], padding: Sequence[int],
         dilation: Sequence[int], groups: int) -> Tensor:
    """N-d convolution (zero padding given explicitly) with the input signal sent through ``feedback``."""
    return _Conv.apply(input, weight, bias, feedback, direct, list(stride), list(padding), list(dilation), groups)


class _CaptureError(torch.autograd.Function):
    """Identity on the output layer's output whose backward records the output error for direct feedback."""

    @staticmethod
    def forward(ctx, output, slot):
        ctx.slot = slot
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad_output):
        ctx.slot.error = grad_output.detach().flatten(1)
        return grad_output, None


def capture_error(output: Tensor, slot) -> Tensor:
    return _CaptureError.apply(output, slot)
