"""The attacks: FGSM and PGD-10 in pixel space with three gradient sources, and their accuracy block."""
from __future__ import annotations

import contextlib
import difflib
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..convert import exact_gradients, set_targets

ATTACKS = ("fgsm", "pgd")
GRADIENTS = ("exact", "rule", "transfer")
DEFAULT_EPS = (0.01, 0.02, 0.05, 0.1)
HEADLINE_EPS = 0.05  # the model-index and `biotorch info` report this radius
SUBSET_SEED = 0  # the images `--limit N` attacks: the first N of this seed's permutation, kept in file order
PGD_STEPS = 10
PGD_STEP_SIZE = 2.5 / PGD_STEPS  # × eps: 10 steps travel 2.5·eps, enough to cross the ball (Madry et al. 2018)
ATTACK_TITLES = {"fgsm": "FGSM", "pgd": f"PGD-{PGD_STEPS}"}
GRADIENT_TITLES = {"exact": "exact gradient", "rule": "the rule's gradient", "transfer": "transfer from bp"}


class Pixels(nn.Module):
    """``model`` on pixel-space inputs in [0, 1]: normalises with the checkpoint's mean and std first.

    Example::

        >>> attacked = Pixels(model, mean=(0.286,), std=(0.353,))
        >>> attacked(images_in_0_1).shape
        torch.Size([8, 10])
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.model = model
        param = next(model.parameters())
        self.register_buffer("mean", torch.tensor(mean, dtype=param.dtype, device=param.device).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=param.dtype, device=param.device).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of a model created with a pretrained tag."""
    cfg = getattr(model, "pretrained_cfg", None)
    if cfg is None:
        raise ValueError("this model has no pretrained metadata: pass mean= and std= (its input normalisation)")
    return tuple(cfg["mean"]), tuple(cfg["std"])


@contextlib.contextmanager
def _attacking(model: nn.Module, exact: bool):
    """Eval mode (BatchNorm statistics fixed), weights frozen (only the input gradient is computed), exact or
    rule backward; everything restored on exit."""
    was_training = model.training
    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    model.eval()
    try:
        with exact_gradients(model) if exact else contextlib.nullcontext():
            yield
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
        model.train(was_training)


@contextlib.contextmanager
def _seeded(seed: int):
    # ART draws PGD's random start from numpy's global generator: seed it, then give the caller's state back.
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        np.random.set_state(state)


def craft(model: nn.Module, images: Tensor, labels: Tensor, attack: str = "pgd", eps: float = HEADLINE_EPS, *,
          mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None, gradient: str = "exact",
          seed: int = 0, batch_size: int = 500) -> Tensor:
    """Adversarial images, in [0, 1] and within L∞ ``eps`` of ``images``, crafted with ``model``'s gradient.

    ``gradient`` is ``"exact"`` (the true gradient) or ``"rule"`` (what the model's learning rule sends back).
    FGSM is one step of ``eps·sign(∇x loss)``; PGD takes ``PGD_STEPS`` steps of ``PGD_STEP_SIZE·eps`` from a
    uniform random start in the ball. ``eps = 0`` returns the images (the ball is one point).

    Example::

        >>> x_adv = craft(model, images, labels, "fgsm", 0.05, gradient="exact")
        >>> (x_adv - images).abs().max() <= 0.05
        tensor(True)
    """
    if attack not in ATTACKS or gradient not in ("exact", "rule"):
        raise ValueError(f"craft takes attack in {ATTACKS} and gradient 'exact' or 'rule', got {attack!r}, "
                         f"{gradient!r} (transfer = craft on the bp model with gradient='exact')")
    if eps == 0:
        return images.clone()
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    if mean is None or std is None:
        mean, std = normalisation(model)
    attacked = Pixels(model, mean, std)
    device = next(model.parameters()).device
    with _attacking(model, exact=gradient == "exact"), _seeded(seed), \
            torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        with torch.no_grad():
            num_classes = attacked(images[:1].to(device)).shape[1]
        class Classifier(PyTorchClassifier):
            def loss_gradient(self, x, y, **kwargs):
                # the rules that learn from the targets (drtp) read the batch's labels in their backward
                set_targets(model, torch.as_tensor(y, device=device))
                return super().loss_gradient(x, y, **kwargs)

        classifier = Classifier(attacked, loss=nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]),
                                nb_classes=num_classes, clip_values=(0.0, 1.0), preprocessing=None,
                                device_type="gpu" if device.type == "cuda" else "cpu")
        if attack == "fgsm":
            method = FastGradientMethod(classifier, norm=np.inf, eps=eps, batch_size=batch_size)
        else:
            method = ProjectedGradientDescent(classifier, norm=np.inf, eps=eps, eps_step=PGD_STEP_SIZE * eps,
                                              max_iter=PGD_STEPS, num_random_init=1, batch_size=batch_size,
                                              verbose=False)
        adversarial = method.generate(images.detach().cpu().float().numpy(), y=labels.cpu().numpy())
    return torch.from_numpy(adversarial).to(images.device)


def vanished(model: nn.Module, images: Tensor, labels: Tensor, *, mean: Optional[Sequence[float]] = None,
             std: Optional[Sequence[float]] = None, gradient: str = "exact", batch_size: int = 500) -> int:
    """How many ``images`` get an all-zero or non-finite input gradient from ``gradient`` (``"exact"`` or
    ``"rule"``), the loss and batches the attacks use: a gradient attack cannot move those images, so a top-1 that
    counts them measures gradient masking, not robustness, and is an upper bound.

    Example::

        >>> vanished(model, images, labels, gradient="exact")    # a model whose logits saturate
        63
    """
    if mean is None or std is None:
        mean, std = normalisation(model)
    attacked, device, count = Pixels(model, mean, std), next(model.parameters()).device, 0
    with _attacking(model, exact=gradient == "exact"):
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(device, torch.float32, copy=True).requires_grad_()
            y = labels[i:i + batch_size].to(device)
            set_targets(model, y)
            (grad,) = torch.autograd.grad(F.cross_entropy(attacked(x), y), x)
            grad = grad.flatten(1)
            count += int(((grad == 0).all(1) | ~torch.isfinite(grad).all(1)).sum())
    return count


@torch.no_grad()
def accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, mean: Optional[Sequence[float]] = None,
             std: Optional[Sequence[float]] = None, batch_size: int = 500) -> float:
    """Top-1 (%) of ``model`` (in eval mode) on pixel-space ``images`` in [0, 1]."""
    if mean is None or std is None:
        mean, std = normalisation(model)
    attacked, device = Pixels(model, mean, std), next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct = sum(int((attacked(images[i:i + batch_size].to(device)).argmax(1)
                       == labels[i:i + batch_size].to(device)).sum()) for i in range(0, len(images), batch_size))
    model.train(was_training)
    return 100.0 * correct / max(len(images), 1)


def evaluate_robustness(model: nn.Module, images: Tensor, labels: Tensor, *,
                        mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                        transfer_model: Optional[nn.Module] = None, attacks: Sequence[str] = ATTACKS,
                        eps: Sequence[float] = DEFAULT_EPS, gradients: Sequence[str] = GRADIENTS, seed: int = 0,
                        batch_size: int = 500, split: str = "test", transfer_cache: Optional[dict] = None,
                        progress: Union[bool, dict] = True) -> list[dict]:
    """Top-1 of ``model`` under each attack × eps × gradient source: the ``robustness`` block of a card. Each row
    also counts the images whose gradient from its source ``vanished`` (:func:`vanished`): its top-1 is an upper bound.

    ``transfer_model`` is the bp model of the same architecture and data (needed for ``"transfer"``); its
    adversarial examples depend only on it and the images, so ``transfer_cache`` (a dict) may be shared by
    targets attacked on the same images: each is crafted once. ``progress``: a tqdm bar (a dict: its options).

    Example::

        >>> block = evaluate_robustness(model, images, labels, transfer_model=bp, attacks=["pgd"], eps=[0.05])
        >>> [(r["gradient"], r["top1"]) for r in block]        # lenet_fa.fashion_mnist, the 10,000 test images
        [('exact', 26.43), ('rule', 78.99), ('transfer', 76.16)]
    """
    attacks, eps, gradients = check_attacks(attacks), check_eps(eps), check_gradients(gradients)
    if "transfer" in gradients and transfer_model is None:
        raise ValueError("the transfer gradient needs transfer_model= (the bp model of the same architecture "
                         "and data)")
    if mean is None or std is None:
        mean, std = normalisation(model)
    transfer_cache = {} if transfer_cache is None else transfer_cache
    bp_mean, bp_std = (normalisation(transfer_model) if hasattr(transfer_model, "pretrained_cfg")
                       else (mean, std))
    tasks = [(attack, e, gradient) for attack in attacks for e in eps for gradient in gradients]
    masked = {g: vanished(transfer_model if g == "transfer" else model, images, labels,
                          mean=bp_mean if g == "transfer" else mean, std=bp_std if g == "transfer" else std,
                          gradient="rule" if g == "rule" else "exact", batch_size=batch_size) for g in gradients}
    from tqdm.auto import tqdm

    block = []
    bar = dict(desc="attacks", unit="attack", disable=None if progress else True)  # off when not a terminal
    for attack, e, gradient in tqdm(tasks, **{**bar, **(progress if isinstance(progress, dict) else {})}):
        source = transfer_model if gradient == "transfer" else model
        if source is transfer_model and gradient != "rule":
            # the bp model's white-box examples: crafted once for every target (and for a bp target that
            # passes itself as transfer_model, its exact and transfer attacks are this one attack)
            key = (attack, e, seed)
            if key not in transfer_cache:
                transfer_cache[key] = craft(source, images, labels, attack, e, mean=bp_mean, std=bp_std,
                                            gradient="exact", seed=seed, batch_size=batch_size)
            adversarial = transfer_cache[key]
        else:
            adversarial = craft(model, images, labels, attack, e, mean=mean, std=std,
                                gradient="rule" if gradient == "rule" else "exact", seed=seed,
                                batch_size=batch_size)
        top1 = accuracy(model, adversarial, labels, mean=mean, std=std, batch_size=batch_size)
        block.append({"attack": attack, "eps": e, "gradient": gradient, "top1": round(top1, 4),
                      "images": len(labels), "seed": seed, "split": split, "vanished": masked[gradient]})
    return block


# --------------------------------------------------------------------------------------------------------
# validation of user input


def _check_names(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    values = [v.strip() for v in ([values] if isinstance(values, str) else values)]
    for value in values:
        if value not in allowed:
            close = difflib.get_close_matches(value, allowed, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ValueError(f"unknown {what} {value!r}.{hint} Choose from {', '.join(allowed)}")
    if not values:
        raise ValueError(f"name at least one {what} ({', '.join(allowed)})")
    return list(dict.fromkeys(values))


def check_attacks(attacks: Union[str, Sequence[str]]) -> list[str]:
    return _check_names(attacks.split(",") if isinstance(attacks, str) else attacks, ATTACKS, "attack")


def check_gradients(gradients: Union[str, Sequence[str]]) -> list[str]:
    return _check_names(gradients.split(",") if isinstance(gradients, str) else gradients, GRADIENTS, "gradient")


def check_eps(eps: Union[str, Sequence[float]]) -> list[float]:
    """Radii in pixel units, e.g. ``"0.01,0.05"`` (``8/255`` is accepted too)."""
    values = []
    for item in (eps.split(",") if isinstance(eps, str) else eps):
        try:
            text = str(item).strip()
            value = float(text) if "/" not in text else float(text.split("/")[0]) / float(text.split("/")[1])
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"eps {item!r} is not a number: give radii in pixel units, e.g. 0.01,0.05 or 8/255") \
                from None
        if not 0 <= value <= 1:
            raise ValueError(f"eps {item!r} is outside [0, 1]: pixels lie in [0, 1], so eps is in pixel units")
        values.append(value)
    if not values:
        raise ValueError("name at least one eps, e.g. --eps 0.05")
    return list(dict.fromkeys(values))


# --------------------------------------------------------------------------------------------------------
# data
