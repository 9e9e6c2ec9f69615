"""Learning rules: which signal a layer sends back to its input, and how feedback changes after a step.

A rule is a small object. ``setup`` registers its feedback state on a layer (buffers, or a parameter for kp),
``signal`` returns what the shared autograd Functions use in backward (a feedback tensor of W's shape, or a
direct projection of the output error), and ``after_step`` updates feedback after ``optimizer.step()``
(brsf redraws, wm mirrors); ``biotorch.feedback_step(model)`` calls it for every layer.

Every random draw comes from a counter-based generator keyed by (seed, step): the same numbers on CPU and
CUDA, on every DDP rank, with no host synchronisation and nothing to carry but two integers.

Example::

    >>> layer = biotorch.nn.Linear(4, 3, rule="fa", seed=1)
    >>> layer.feedback_weight.shape
    torch.Size([3, 4])
"""
from __future__ import annotations

import functools
import math
import re
from typing import ClassVar, Optional

import torch
from torch import Tensor, nn

from .errors import close_matches
from .functional import capture_error

_MASKS = {s: (1 << (64 - s)) - 1 for s in (11, 27, 30, 31)}


def _signed(x: int) -> int:
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN, _MIX1, _MIX2 = _signed(0x9E3779B97F4A7C15), _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB)


def counter_uniform(shape, key, device=None) -> Tensor:
    """Uniform numbers in [-1, 1), U(−1, 1), from splitmix64 of (key, index): identical on every device.

    ``key`` is an int or an int64 tensor (so a step counter on the GPU needs no host sync).
    """
    numel = math.prod(shape)
    key = torch.as_tensor(key, dtype=torch.int64, device=device)
    x = torch.arange(numel, dtype=torch.int64, device=key.device) + (key + 1) * _GOLDEN
    x = (x ^ ((x >> 30) & _MASKS[30])) * _MIX1
    x = (x ^ ((x >> 27) & _MASKS[27])) * _MIX2
    x = x ^ ((x >> 31) & _MASKS[31])
    unit = ((x >> 11) & _MASKS[11]).to(torch.float64) * 2.0 ** -53  # 53 random bits in [0, 1)
    return (unit * 2 - 1).to(torch.float32).reshape(shape)


def _key(seed: Tensor, step) -> Tensor:
    return seed * 1_000_003 + step


def init_bound(weight: Tensor) -> float:
    """torch's default init bound for a Linear/Conv weight: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return 1.0 / math.sqrt(weight[0].numel())


FEEDBACK_INITS = ("default", "xavier")


def feedback_bound(shape, init: str) -> float:
    """Half-width of the uniform draw of a feedback matrix of ``shape`` (out, in, *kernel).

    ``default``: torch's default init of a weight of that shape, U(±1/sqrt(fan_in)).
    ``xavier``: Glorot's U(±sqrt(6 / (fan_in + fan_out))), as BioTorch initialises its feedback.
    """
    receptive = math.prod(shape[2:])
    fan_in, fan_out = shape[1] * receptive, shape[0] * receptive
    return 1.0 / math.sqrt(fan_in) if init == "default" else math.sqrt(6.0 / (fan_in + fan_out))


def draw_like(weight: Tensor, key, init: str = "default") -> Tensor:
    """A random matrix of W's shape from ``key``, scaled by ``init`` (see :func:`feedback_bound`)."""
    bound = feedback_bound(weight.shape, init)
    return (counter_uniform(weight.shape, key, weight.device) * bound).to(weight.dtype)


def _check_init(rule: str, feedback_init: str) -> str:
    if feedback_init not in FEEDBACK_INITS:
        raise ValueError(f"{rule}: feedback_init must be one of {', '.join(FEEDBACK_INITS)}, got {feedback_init!r}")
    return feedback_init


_MOSKOVITZ_2018 = """@misc{moskovitz2018feedback,
  title         = {Feedback alignment in deep convolutional networks},
  author        = {Moskovitz, Theodore H. and Litwin-Kumar, Ashok and Abbott, L. F.},
  year          = {2018},
  eprint        = {1812.06488},
  archivePrefix = {arXiv}
}"""
_AKROUT_2019 = """@inproceedings{akrout2019deep,
  title     = {Deep Learning without Weight Transport},
  author    = {Akrout, Mohamed and Wilson, Collin and Humphreys, Peter C. and Lillicrap, Timothy and Tweed, Douglas},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {32},
  year      = {2019}
}"""


class Rule:
    """Backprop through the same code path as every other rule: the control in every comparison."""
    # The card's words: what the rule does (a paragraph) and the paper it follows (BibTeX).
    summary: ClassVar[str] = (
        "Backpropagation sends each layer's error backwards through the transpose of its own forward weights, "
        "so every update is the exact gradient of the loss. It needs weight transport, which brains are not "
        "known to do, and is the control every other rule is compared with."
    )
    citation: ClassVar[str] = """@article{rumelhart1986learning,
  title   = {Learning representations by back-propagating errors},
  author  = {Rumelhart, David E. and Hinton, Geoffrey E. and Williams, Ronald J.},
  journal = {Nature},
  volume  = {323},
  pages   = {533--536},
  year    = {1986}
}"""

    name: ClassVar[str] = "bp"
    options: ClassVar[tuple[str, ...]] = ()
    stateful: ClassVar[bool] = False  # True when after_step does something
    # Feedback buffers that are functions of (seed, step): not saved, re-derived by after_load, and
    # checked against the fingerprint saved with the weights (biotorch.convert.feedback_fingerprint).
    derived: ClassVar[tuple[str, ...]] = ()
    # True when feedback is shaped by the layer's input and drawn at its first forward (dfa).
    drawn_at_first_forward: ClassVar[bool] = False
    # True when the signal comes straight from the model's output (dfa's error, drtp's targets): convert gives the
    # rule's layers the model's output context (``layer.output_error``, an :class:`OutputError`).
    direct: ClassVar[bool] = False

    def setup(self, layer: nn.Module, seed: int) -> None:
        """Register the rule's feedback state on ``layer`` (buffers named ``feedback_*``; a parameter to learn it).

        It also runs on the meta device (``biotorch list`` counts parameters there; a checkpoint's shapes are checked
        there before anything is allocated): make tensors with tensor operations, on ``layer.weight.device``, and
        never read their values on the host (``int(layer.feedback_seed)``, ``.item()``); ``counter_uniform`` takes
        a seed tensor as its key."""

    def signal(self, layer: nn.Module, input: Tensor):
        """``(feedback, direct)`` for the backward of ``layer`` on this ``input``. ``feedback``: a tensor of W's shape
        the signal to the layer's input goes through (δ·B; W for bp). ``direct``: ``None``, or a function of the
        input's shape (``torch.Size``) returning the signal that replaces the input's gradient (dfa's e·B₁, drtp's
        y*·B₁), which then makes ``feedback`` unused (it may be ``None``). The weight gradient is always the layer's
        true local gradient."""
        return layer.weight.detach(), None

    def after_step(self, layer: nn.Module) -> None:
        """Update feedback after ``optimizer.step()`` (``biotorch.feedback_step(model)`` calls it; set ``stateful``),
        in place: a captured CUDA graph reads the same memory on every replay."""

    def after_load(self, layer: nn.Module) -> None:
        """Re-derive what is not saved (``derived`` buffers) after a state_dict load, in place."""

    def discard(self, layer: nn.Module) -> None:
        """Forget feedback drawn for the current classes and input size (``drawn_at_first_forward`` rules)."""

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.options)
        return f"{self.name}({opts})" if opts else self.name


BP = Rule


def _register_seed(layer: nn.Module, seed: int) -> Tensor:
    layer.register_buffer("feedback_seed", torch.tensor(seed, dtype=torch.int64, device=layer.weight.device))
    return layer.feedback_seed


class FA(Rule):
    """Feedback Alignment (Lillicrap et al. 2016): a fixed random B of W's shape.

    ``feedback_init``: ``"default"`` draws B like torch's default init of W, ``"xavier"`` as Glorot."""
    summary = (
        "Feedback Alignment sends errors backwards through a fixed random matrix B of each layer's shape "
        "instead of the transpose of the forward weights. The forward weights come to align with B during "
        "training, so the updates approximate the gradient without weight transport."
    )
    citation = """@article{lillicrap2016random,
  title   = {Random synaptic feedback weights support error backpropagation for deep learning},
  author  = {Lillicrap, Timothy P. and Cownden, Daniel and Tweed, Douglas B. and Akerman, Colin J.},
  journal = {Nature Communications},
  volume  = {7},
  pages   = {13276},
  year    = {2016}
}"""

    name = "fa"
    options = ("feedback_init",)
    derived = ("feedback_weight",)

    def __init__(self, feedback_init: str = "default"):
        self.feedback_init = _check_init(self.name, feedback_init)

    def draw(self, layer) -> Tensor:
        return draw_like(layer.weight, _key(layer.feedback_seed, 0), self.feedback_init)

    def setup(self, layer, seed):
        _register_seed(layer, seed)
        layer.register_buffer("feedback_weight", self.draw(layer), persistent=not self.derived)

    def after_load(self, layer):
        if self.derived:
            with torch.no_grad():
                layer.feedback_weight.copy_(self.draw(layer))

    def signal(self, layer, input):
        return layer.feedback_weight, None


class USF(Rule):
    """Uniform Sign-concordant Feedback (Liao et al. 2016): sign(W)·s, s the std of W's default init."""
    summary = (
        "Uniform Sign-concordant Feedback sends errors backwards through sign(W) times a constant (the scale "
        "of W's initialisation). Only the signs of the forward weights are transported, never their "
        "magnitudes."
    )
    citation = """@inproceedings{liao2016important,
  title     = {How Important Is Weight Symmetry in Backpropagation?},
  author    = {Liao, Qianli and Leibo, Joel Z. and Poggio, Tomaso},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  volume    = {30},
  year      = {2016}
}"""

    name = "usf"

    def signal(self, layer, input):
        scale = init_bound(layer.weight) / math.sqrt(3)
        return layer.weight.detach().sign() * scale, None


class FRSF(Rule):
    """Fixed Random-magnitude Sign-concordant Feedback (Moskovitz et al. 2018): |R0| ∘ sign(W)."""
    summary = (
        "Fixed Random-magnitude Sign-concordant Feedback sends errors backwards through |R| ∘ sign(W), with a "
        "random magnitude matrix R drawn once. The feedback shares the forward weights' signs but not their "
        "magnitudes."
    )
    citation = _MOSKOVITZ_2018

    name = "frsf"
    options = ("feedback_init",)
    derived = ("feedback_magnitude",)

    def __init__(self, feedback_init: str = "default"):
        self.feedback_init = _check_init(self.name, feedback_init)

    def setup(self, layer, seed):
        _register_seed(layer, seed)
        layer.register_buffer("feedback_step", torch.zeros((), dtype=torch.int64, device=layer.weight.device))
        layer.register_buffer("feedback_magnitude", torch.empty_like(layer.weight), persistent=False)
        self.after_load(layer)

    def after_load(self, layer):
        key = _key(layer.feedback_seed, layer.feedback_step)
        with torch.no_grad():
            layer.feedback_magnitude.copy_(draw_like(layer.weight, key, self.feedback_init).abs())

    def signal(self, layer, input):
        return layer.weight.detach().sign() * layer.feedback_magnitude, None


class BRSF(FRSF):
    """Batch Random-magnitude Sign-concordant Feedback: |R| ∘ sign(W), R redrawn from (seed, step) each step."""
    summary = (
        "Batch Random-magnitude Sign-concordant Feedback sends errors backwards through |R| ∘ sign(W), with R "
        "redrawn at every optimizer step. The feedback shares the forward weights' signs while its magnitudes "
        "are fresh noise every batch."
    )
    citation = _MOSKOVITZ_2018

    name = "brsf"
    stateful = True

    def after_step(self, layer):
        layer.feedback_step.add_(1)
        self.after_load(layer)


class KP(FA):
    """Kolen-Pollack (Kolen & Pollack 1994; Akrout et al. 2019): B learns with W's update and weight decay.

    B is a parameter that receives exactly W's gradient, so the optimizer gives B the same update and
    weight decay as W and W − B decays to zero."""
    summary = (
        "Kolen-Pollack learning gives the feedback matrix B exactly the forward weights' update and weight "
        "decay. The difference W − B then decays to zero, so the feedback converges to the forward weights "
        "without being copied from them."
    )
    citation = """@inproceedings{kolen1994backpropagation,
  title     = {Backpropagation without weight transport},
  author    = {Kolen, John F. and Pollack, Jordan B.},
  booktitle = {Proceedings of the IEEE International Conference on Neural Networks},
  year      = {1994}
}

""" + _AKROUT_2019

    name = "kp"
    derived = ()  # B is learned: saved with the weights

    def setup(self, layer, seed):
        _register_seed(layer, seed)
        layer.feedback_weight = nn.Parameter(self.draw(layer))


class WM(FA):
    """Weight Mirrors (Akrout et al. 2019): B learned by driving noise through the forward weights.

    After each step, unit-variance noise x goes through the forward weights, y = W x, and
    B ← (1 − η) B + η·mean(y xᵀ); the decay is the growth control, so B tracks W·E[x xᵀ] = W.
    A small ``mirror_lr`` averages the noise over ~1/η steps: faster tracking (η = 0.01 to 0.05) destabilised
    LeNet training on Fashion-MNIST in our runs even though B was then within 2–10° of W."""
    summary = (
        "Weight Mirrors learn the feedback matrix by driving noise through the forward weights after each "
        "step: with y = Wx, B ← (1 − η)B + η·mean(y xᵀ). Because the noise is white, B tracks W and the "
        "backward pass approaches backprop without weight transport."
    )
    citation = _AKROUT_2019

    name = "wm"
    stateful = True
    options = ("mirror_lr", "mirror_samples", "feedback_init")
    derived = ()  # B is learned: saved with the weights

    def __init__(self, mirror_lr: float = 0.002, mirror_samples: int = 64, feedback_init: str = "default"):
        super().__init__(feedback_init)
        if not 0 < mirror_lr <= 1:
            raise ValueError(f"wm: mirror_lr must be in (0, 1], got {mirror_lr!r}")
        if isinstance(mirror_samples, bool) or not isinstance(mirror_samples, int) or not 1 <= mirror_samples <= 65536:
            raise ValueError(f"wm: mirror_samples must be an integer in [1, 65536] (noise samples per layer and "
                             f"step), got {mirror_samples!r}")
        self.mirror_lr, self.mirror_samples = float(mirror_lr), int(mirror_samples)

    def setup(self, layer, seed):
        super().setup(layer, seed)
        layer.register_buffer("feedback_step", torch.zeros((), dtype=torch.int64, device=layer.weight.device))

    @torch.no_grad()
    def after_step(self, layer):
        layer.feedback_step.add_(1)
        weight = layer.weight.flatten(1)
        fan_in = weight.shape[1]
        noise = counter_uniform((self.mirror_samples, fan_in), _key(layer.feedback_seed, layer.feedback_step))
        noise = noise.to(weight.dtype).mul_(math.sqrt(3))  # unit variance
        mirrored = noise @ weight.t()
        update = (mirrored.t() @ noise).view(layer.feedback_weight.shape)  # any memory format
        layer.feedback_weight.mul_(1 - self.mirror_lr).add_(update, alpha=self.mirror_lr / self.mirror_samples)


class _ErrorSlot:
    """What one forward pass gives direct rules: the output error, filled by the output's backward, and the batch's
    targets, given before the forward (:func:`biotorch.set_targets`); read by the layers' backward."""

    __slots__ = ("error", "targets")

    def __init__(self):
        self.error: Optional[Tensor] = None
        self.targets: Optional[Tensor] = None


class OutputError:
    """Per-model context for direct feedback, shared by the dfa layers and the model's output layer.

    Each forward pass binds the current slot in every dfa layer it runs; the output layer ends the pass:
    the backward of its output records the output error in that slot, and the next pass gets a new slot.
    Living in the layers (no hooks on the model), it works the same in an fx-traced copy of the model.
    """

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.current = _ErrorSlot()

    def capture(self, output: Tensor) -> Tensor:
        slot, self.current = self.current, _ErrorSlot()
        return capture_error(output, slot) if output.requires_grad else output


def _put(layer: nn.Module, name: str, value: Tensor) -> None:
    """Set buffer ``name`` to ``value``: in place where it fits (same shape and dtype), so that a re-derived
    buffer keeps its memory. A CUDA graph captured earlier reads that memory; a new tensor would leave it
    reading a freed block (an illegal memory access once the allocator returns it to the driver)."""
    old = getattr(layer, name)
    if old is not None and old.shape == value.shape and old.dtype == value.dtype:
        old.copy_(value)
    else:
        setattr(layer, name, value)


class DFA(Rule):
    """Direct Feedback Alignment (Nøkland 2016): the output error projected straight to every layer.

    The signal sent to a layer's input is the model's output
    error e projected by a fixed random B of shape [num_classes, *input_shape]; it then passes the
    preceding nonlinearity, so each layer's pre-activation receives (e·B) ⊙ f'(a), as in the paper.

    ``dfa_feedback="dense"`` stores B whole (right for CIFAR-sized layers). ``"factorized"`` stores
    B[k, c, *s] = U[k, c]·V[c, *s], memory num_classes·C + C·H·W instead of num_classes·C·H·W: use it for
    ImageNet-sized inputs. Feedback is drawn at the first forward (its shape depends on the input) from the
    layer's seed; ``biotorch.redraw_feedback(model, num_classes)`` redraws it when the head changes.
    """
    summary = (
        "Direct Feedback Alignment projects the output error straight to every layer through a fixed random "
        "matrix, with no layer-by-layer backward pass. Each hidden layer receives (e·B) ⊙ f′(a), so all "
        "layers can be updated as soon as the output error is known."
    )
    citation = """@inproceedings{nokland2016direct,
  title     = {Direct Feedback Alignment Provides Learning in Deep Neural Networks},
  author    = {N{\\o}kland, Arild},
  booktitle = {Advances in Neural Information Processing Systems},
  volume    = {29},
  year      = {2016}
}"""

    name = "dfa"
    options = ("dfa_feedback", "feedback_init")
    drawn_at_first_forward = True
    direct = True
    derived = ("feedback_weight", "feedback_spatial")

    def __init__(self, dfa_feedback: str = "dense", feedback_init: str = "default"):
        if dfa_feedback not in ("dense", "factorized"):
            raise ValueError(f"dfa: dfa_feedback must be 'dense' or 'factorized', got {dfa_feedback!r}")
        self.dfa_feedback = dfa_feedback
        self.feedback_init = _check_init(self.name, feedback_init)

    def setup(self, layer, seed):
        _register_seed(layer, seed)
        layer.register_buffer("feedback_weight", None, persistent=False)
        if self.dfa_feedback == "factorized":
            layer.register_buffer("feedback_spatial", None, persistent=False)
        self.discard(layer)

    def discard(self, layer) -> None:
        """Forget the drawn feedback: the next forward draws it for the current classes and input size."""
        layer.feedback_weight = layer.weight.new_empty(0)
        if self.dfa_feedback == "factorized":
            layer.feedback_spatial = layer.weight.new_empty(0)

    def _shapes(self, num_classes: int, input_shape) -> tuple:
        if self.dfa_feedback == "factorized" and len(input_shape) > 2:
            return (num_classes, input_shape[1]), tuple(input_shape[1:])
        return (num_classes, *input_shape[1:]), None

    def _drawn(self, layer) -> tuple:
        spatial = getattr(layer, "feedback_spatial", None)
        return (tuple(layer.feedback_weight.shape),
                tuple(spatial.shape) if spatial is not None and spatial.numel() else None)

    @torch.no_grad()
    def draw(self, layer, num_classes: int, input_shape) -> None:
        """Draw B (and V when factorized) for ``num_classes`` outputs and inputs of ``input_shape``."""
        shape, spatial = self._shapes(num_classes, input_shape)
        key, dtype = _key(layer.feedback_seed, 0), layer.weight.dtype
        # default: U(±1/sqrt(classes)); xavier: Glorot over B seen as a (classes, input numel) matrix.
        # (A product with a Python float rounds the same on every device; CUDA divides by multiplying.)
        bound = (1 / math.sqrt(num_classes) if self.feedback_init == "default"
                 else feedback_bound((num_classes, math.prod(input_shape[1:])), "xavier"))
        _put(layer, "feedback_weight", (counter_uniform(shape, key) * bound).to(dtype))
        if self.dfa_feedback == "factorized":
            spatial_draw = counter_uniform(spatial, key + 1) * math.sqrt(3) if spatial else key.new_empty(0)
            _put(layer, "feedback_spatial", spatial_draw.to(dtype))

    def after_load(self, layer):
        # B is not saved: redraw it from the loaded seed for the shape the model already drew it in.
        if layer.feedback_weight.numel():
            spatial = getattr(layer, "feedback_spatial", None)
            input_shape = ((1, *spatial.shape) if spatial is not None and spatial.numel()
                           else (1, *layer.feedback_weight.shape[1:]))
            self.draw(layer, layer.feedback_weight.shape[0], input_shape)

    def signal(self, layer, input):
        context: Optional[OutputError] = layer.output_error
        if context is None:  # no output layer yet (a model without a head): the backward says so
            return None, functools.partial(self.project, layer, _ErrorSlot())
        expected = self._shapes(context.num_classes, input.shape)
        if layer.feedback_weight.numel() == 0:
            self.draw(layer, context.num_classes, input.shape)
        elif torch.is_grad_enabled() and self._drawn(layer) != expected:
            raise RuntimeError(f"dfa feedback was drawn for {self._drawn(layer)} ((num_classes, *input), and "
                               f"the spatial factor when factorized) but this input needs {expected}; call "
                               "biotorch.redraw_feedback(model) after changing input size or head")
        if not layer.feedback_weight.is_contiguous():
            # B is read flat, as (classes, C·H·W); after .to(memory_format=channels_last) make it
            # contiguous once here rather than copying it in every backward.
            layer.feedback_weight = layer.feedback_weight.contiguous()
        return None, functools.partial(self.project, layer, context.current)

    def output_signal(self, slot: _ErrorSlot, num_classes: int) -> Tensor:
        """What is projected to the layers, (batch, classes): the output error."""
        if slot.error is None:
            raise RuntimeError(f"{self.name}: no output error reached this layer: call backward on a loss computed "
                               "from the output of the model biotorch.convert made learn by it (a model without a "
                               "classifier, or a feature extractor, has no output error)")
        return slot.error

    def project(self, layer, slot: _ErrorSlot, input_shape) -> Tensor:
        error = self.output_signal(slot, layer.feedback_weight.shape[0])
        feedback = layer.feedback_weight
        if error.shape[1] != feedback.shape[0]:
            raise RuntimeError(f"{self.name}: the output has {error.shape[1]} classes but feedback was drawn for "
                               f"{feedback.shape[0]}; call biotorch.redraw_feedback(model, num_classes=...)")
        error = error.to(feedback.dtype)
        if self.dfa_feedback == "factorized" and len(input_shape) > 2:
            channel = error @ feedback
            return (channel.view(*channel.shape, *[1] * (len(input_shape) - 2)) * layer.feedback_spatial)
        return (error @ feedback.flatten(1)).view(input_shape)


class DRTP(DFA):
    """Direct Random Target Projection (Frenkel, Lefebvre & Bol 2021): the batch's targets projected to every layer.

    Each layer's input receives y*·B (y* the one-hot targets, divided by the batch size as a mean loss's error is;
    the paper's δ = Bᵀy*) instead of the output error; it passes the preceding nonlinearity, as dfa's does. The
    output layer learns with its true error. No error travels back: a layer can be updated as soon as the targets
    are known. The targets come from :func:`biotorch.set_targets` (``set_targets(model, y)`` before the forward
    pass; biotorch's trainer does it), class indices or a (batch, classes) tensor; B as dfa's (``dfa_feedback``,
    ``feedback_init``). The signal never shrinks as the model learns: the paper's units saturate (tanh), which ends
    the updates, and ReLU units do not. A ReLU LeNet's activity grew without bound in every recipe we tried;
    ``lenet_tanh`` trains (``recipes/fashion_mnist/SEARCH.md``).
    """

    summary = (
        "Direct Random Target Projection sends every hidden layer a fixed random projection of the batch's one-hot "
        "targets instead of an error: no error travels backwards, and a layer can be updated as soon as the "
        "targets are known. Only the output layer learns from its true error."
    )
    citation = """@article{frenkel2021learning,
  title   = {Learning Without Feedback: Fixed Random Learning Signals Allow for Feedforward Training of Deep Neural
             Networks},
  author  = {Frenkel, Charlotte and Lefebvre, Martin and Bol, David},
  journal = {Frontiers in Neuroscience},
  volume  = {15},
  pages   = {629892},
  year    = {2021}
}"""

    name = "drtp"

    def output_signal(self, slot: _ErrorSlot, num_classes: int) -> Tensor:
        targets = slot.targets
        if targets is None:
            raise RuntimeError("drtp: no targets for this batch: call biotorch.set_targets(model, targets) before the "
                               "forward pass (biotorch's trainer does)")
        if targets.dim() == 1:  # class indices; scatter, not one_hot: no host sync (CUDA graphs)
            targets = torch.zeros(len(targets), num_classes, device=targets.device).scatter_(1, targets[:, None], 1.0)
        return targets.flatten(1) / len(targets)


class SDFA(DFA):
    """Sparse Direct Feedback Alignment (Crafton et al. 2019): dfa whose B connects each input unit to one output.

    Every column of B (an input unit; a channel when ``dfa_feedback="factorized"``) keeps one entry, at a class drawn
    from the layer's seed, scaled by √classes so that the signal's variance is dfa's; the rest are zero. Each unit
    then hears the error of a single output, a feedback path with num_classes times fewer connections.
    """

    summary = (
        "Sparse Direct Feedback Alignment projects the output error to every layer as dfa does, through a random "
        "matrix with one connection per input unit: each unit hears the error of a single output. The feedback "
        "path has as many connections as units."
    )
    citation = """@article{crafton2019direct,
  title   = {Direct Feedback Alignment With Sparse Connections for Local Learning},
  author  = {Crafton, Brian and Parihar, Abhinav and Gebhardt, Evan and Raychowdhury, Arijit},
  journal = {Frontiers in Neuroscience},
  volume  = {13},
  pages   = {525},
  year    = {2019}
}"""

    name = "sdfa"

    @torch.no_grad()
    def draw(self, layer, num_classes: int, input_shape) -> None:
        super().draw(layer, num_classes, input_shape)
        dense = layer.feedback_weight.flatten(1)
        pick = ((counter_uniform(dense.shape[1:], _key(layer.feedback_seed, 0) + 2) + 1) / 2 * num_classes).long()
        keep = torch.arange(num_classes, device=dense.device)[:, None] == pick.clamp_(max=num_classes - 1)[None]
        layer.feedback_weight.copy_((dense * keep * math.sqrt(num_classes)).view_as(layer.feedback_weight))


# Every rule by name: biotorch's own, then the rules registered with biotorch.register_rule (read it at call
# time: it grows).
RULES: dict[str, type[Rule]] = {r.name: r for r in (BP, FA, DFA, USF, BRSF, FRSF, WM, KP, DRTP, SDFA)}
BUILT_IN = tuple(RULES)
RULE_NAME = re.compile(r"[a-z][a-z0-9]{0,31}")  # a name part of arch_rule.tag: no '_' (it splits), no '.'


def add_rule(cls: type[Rule]) -> bool:
    """Put ``cls`` in :data:`RULES` after checking it is a rule; False when it was there already (the same class).
    ``biotorch.register_rule`` is the public way in: it also registers the rule's models."""
    if not (isinstance(cls, type) and issubclass(cls, Rule)):
        raise TypeError(f"register_rule takes a subclass of biotorch.Rule, got {cls!r}")
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not RULE_NAME.fullmatch(name):
        raise ValueError(f"{cls.__qualname__}: a rule's `name` is its own class attribute of lowercase letters and "
                         f"digits, starting with a letter (it becomes part of model names), got {name!r}")
    if RULES.get(name) is cls:
        return False
    if name in RULES:
        taken = RULES[name]
        raise ValueError(f"rule name {name!r} is taken by {taken.__module__}.{taken.__qualname__}; choose another")
    if not isinstance(cls.options, tuple) or not all(isinstance(o, str) and o.isidentifier() for o in cls.options):
        raise ValueError(f"{cls.__qualname__}: `options` must be a tuple of keyword names, got {cls.options!r}")
    try:
        cls()
    except TypeError as error:
        raise ValueError(f"{cls.__qualname__}: a rule must be constructible with no arguments (every option has a "
                         f"default): {error}") from None
    RULES[name] = cls
    return True


def rule_module(rule: Rule) -> Optional[str]:
    """The module defining ``rule`` when it is not one of biotorch's own (recorded in checkpoints: loading one
    names the module to import)."""
    module = type(rule).__module__
    return None if module == __name__ else module


def make_rule(name: str, **options) -> Rule:
    """The rule object for ``name``; unknown names and options fail with what is allowed."""
    if isinstance(name, Rule):
        return name
    if name not in RULES:
        close = close_matches(name, RULES)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown learning rule {name!r}.{hint} Available: {', '.join(RULES)}")
    cls = RULES[name]
    unknown = set(options) - set(cls.options)
    if unknown:
        allowed = ", ".join(cls.options) or "none"
        raise ValueError(f"rule {name!r} takes no option {', '.join(sorted(unknown))}; its options: {allowed}")
    return cls(**options)
