"""The attacks: FGSM and PGD-10 in pixel space with three gradient sources, Square with none, their accuracy block
and its worst case per image."""
from __future__ import annotations

import base64
import contextlib
import difflib
import time
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..convert import exact_gradients, set_targets
from ..errors import ConfigError

GRADIENT_ATTACKS = ("fgsm", "pgd")  # crafted with a gradient: one row per gradient source
ATTACKS = (*GRADIENT_ATTACKS, "square")  # square: the model's outputs only, one source ("queries")
DEFAULT_ATTACKS = GRADIENT_ATTACKS  # what `biotorch robustness` runs unless told (Square costs minutes a model)
GRADIENTS = ("exact", "rule", "transfer")
SOURCES = (*GRADIENTS, "queries", "all")  # a row's "gradient": a gradient source, Square's queries, the worst case's
DEFAULT_EPS = (0.01, 0.02, 0.05, 0.1)
SQUARE_EPS = (8 / 255, 0.05)  # RobustBench's CIFAR-10 radius, and HEADLINE_EPS
HEADLINE_EPS = 0.05  # the model-index and `biotorch info` report this radius
SUBSET_SEED = 0  # the images `--limit N` attacks: the first N of this seed's permutation, kept in file order
PGD_STEPS = 10
PGD_STEP_SIZE = 2.5 / PGD_STEPS  # × eps: 10 steps travel 2.5·eps, enough to cross the ball (Madry et al. 2018)
SQUARE_QUERIES = 5000  # AutoAttack's (Croce & Hein 2020)
PRECISIONS = ("auto", "fp32")  # auto: bf16 for Square's queries where that is faster and agrees with fp32
ATTACK_TITLES = {"fgsm": "FGSM", "pgd": f"PGD-{PGD_STEPS}", "square": "Square", "worst": "worst case"}
GRADIENT_TITLES = {"exact": "exact gradient", "rule": "the rule's gradient", "transfer": "transfer from bp",
                   "queries": "queries (no gradient)", "all": "worst case"}


def default_eps(attack: str) -> tuple[float, ...]:
    """The radii ``attack`` runs at unless told: ``SQUARE_EPS`` for Square (5,000 queries an image are costly),
    ``DEFAULT_EPS`` for the gradient attacks."""
    return SQUARE_EPS if attack == "square" else DEFAULT_EPS


def eps_text(eps: float) -> str:
    """``8/255`` for a whole number of 8-bit levels that is no short decimal, else ``0.05``."""
    levels = eps * 255
    if eps not in (0, 1) and abs(levels - round(levels)) < 1e-9 and len(f"{eps:g}") > 5:
        return f"{round(levels)}/255"
    return f"{eps:g}"


def pack_bits(fooled: Tensor) -> str:
    """A row's per-image outcomes as base64: bit i (little-endian in each byte) set if image i was fooled."""
    return base64.b64encode(np.packbits(fooled.cpu().numpy().astype(bool), bitorder="little").tobytes()).decode()


def unpack_bits(text: str, images: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), np.uint8), count=images, bitorder="little").astype(bool)


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


class _Autocast(nn.Module):
    """``module`` under bf16 autocast, its outputs back in fp32 (what ART reads)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            return self.module(x).float()


def _remembering(classifier_class):
    """``classifier_class`` answering an image it scored in its last three calls from memory. ART's Square asks
    each iteration for the outputs of every image, fooled ones included, and again for the candidates it scored
    the iteration before; remembered, only the new candidates reach the model: one query per iteration for each
    image not yet fooled, none for a fooled one."""

    class Remembering(classifier_class):
        recent: list[dict] = []  # image bytes → outputs, of the last calls

        def predict(self, x, batch_size=128, **kwargs):
            keys = [row.tobytes() for row in x]
            known = {k: v for call in self.recent for k, v in call.items()}
            new = [i for i, k in enumerate(keys) if k not in known]
            if new:
                known.update(zip((keys[i] for i in new), super().predict(x[new], batch_size=batch_size, **kwargs)))
            outputs = np.stack([known[k] for k in keys])
            self.recent = [dict(zip(keys, outputs)), *self.recent[:2]]
            return outputs

    return Remembering


def craft(model: nn.Module, images: Tensor, labels: Tensor, attack: str = "pgd", eps: float = HEADLINE_EPS, *,
          mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
          gradient: Optional[str] = None, seed: int = 0, batch_size: int = 500, queries: int = SQUARE_QUERIES,
          precision: str = "fp32") -> Tensor:
    """Adversarial images, in [0, 1] and within L∞ ``eps`` of ``images``, crafted with ``model``'s gradient, or
    for Square with its outputs only.

    ``gradient`` is ``"exact"`` (the true gradient, the default) or ``"rule"`` (what the model's learning rule sends
    back). FGSM is one step of ``eps·sign(∇x loss)``; PGD takes ``PGD_STEPS`` steps of ``PGD_STEP_SIZE·eps`` from a
    uniform random start in the ball. Square (``gradient="queries"``) tries up to ``queries`` random square
    changes an image, keeps those that lower the margin of the true class and stops at the first that fools it;
    ``precision`` ``"bf16"`` runs its queries under bf16 autocast (see :func:`fastest_precision`). ``eps = 0``
    returns the images (the ball is one point).

    Example::

        >>> x_adv = craft(model, images, labels, "fgsm", 0.05, gradient="exact")
        >>> (x_adv - images).abs().max() <= 0.05
        tensor(True)
        >>> x_adv = craft(model, images, labels, "square", 8 / 255, queries=5000)
    """
    gradient = gradient or ("queries" if attack == "square" else "exact")
    if attack not in ATTACKS or gradient not in (("queries",) if attack == "square" else ("exact", "rule")):
        raise ValueError(f"craft takes attack in {ATTACKS} and gradient 'exact' or 'rule' ('queries' for square), "
                         f"got {attack!r}, {gradient!r} (transfer = craft on the bp model with gradient='exact')")
    if eps == 0:
        return images.clone()
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent, SquareAttack
    from art.estimators.classification import PyTorchClassifier

    if mean is None or std is None:
        mean, std = normalisation(model)
    attacked = Pixels(model, mean, std)
    if precision == "bf16":
        attacked = _Autocast(attacked)
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

        classifier = (_remembering(PyTorchClassifier) if attack == "square" else Classifier)(
            attacked, loss=nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]), nb_classes=num_classes,
            clip_values=(0.0, 1.0), preprocessing=None, device_type="gpu" if device.type == "cuda" else "cpu")
        if attack == "square":  # the first query is a random stripe per image, then queries - 1 squares
            method = SquareAttack(classifier, norm=np.inf, eps=eps, max_iter=queries - 1, batch_size=batch_size,
                                  verbose=False)
        elif attack == "fgsm":
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
def predict(model: nn.Module, images: Tensor, *, mean: Optional[Sequence[float]] = None,
            std: Optional[Sequence[float]] = None, batch_size: int = 500, precision: str = "fp32") -> Tensor:
    """The class ``model`` (in eval mode) gives each of the pixel-space ``images`` in [0, 1] (on the CPU)."""
    if mean is None or std is None:
        mean, std = normalisation(model)
    attacked, device = Pixels(model, mean, std), next(model.parameters()).device
    attacked = _Autocast(attacked) if precision == "bf16" else attacked
    was_training = model.training
    model.eval()
    classes = [attacked(images[i:i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(classes) if classes else torch.zeros(0, dtype=torch.long)


def accuracy(model: nn.Module, images: Tensor, labels: Tensor, *, mean: Optional[Sequence[float]] = None,
             std: Optional[Sequence[float]] = None, batch_size: int = 500) -> float:
    """Top-1 (%) of ``model`` (in eval mode) on pixel-space ``images`` in [0, 1]."""
    correct = predict(model, images, mean=mean, std=std, batch_size=batch_size) == labels.cpu()
    return 100.0 * int(correct.sum()) / max(len(images), 1)


def fastest_precision(model: nn.Module, images: Tensor, *, mean: Optional[Sequence[float]] = None,
                      std: Optional[Sequence[float]] = None, batch_size: int = 500) -> str:
    """``"bf16"`` if bf16 autocast is faster than fp32 here and gives each of ``images`` fp32's clean prediction,
    else ``"fp32"``: the precision Square may query in. (The top-1 reported is fp32's on the images it crafts.)"""
    seconds, classes = {}, {}
    for precision in ("fp32", "bf16"):
        start = time.perf_counter()
        classes[precision] = predict(model, images, mean=mean, std=std, batch_size=batch_size, precision=precision)
        seconds[precision] = time.perf_counter() - start
    return "bf16" if seconds["bf16"] < seconds["fp32"] and torch.equal(classes["bf16"], classes["fp32"]) else "fp32"


def evaluate_robustness(model: nn.Module, images: Tensor, labels: Tensor, *,
                        mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                        transfer_model: Optional[nn.Module] = None, attacks: Sequence[str] = DEFAULT_ATTACKS,
                        eps: Optional[Sequence[float]] = None, gradients: Sequence[str] = GRADIENTS, seed: int = 0,
                        batch_size: int = 500, split: str = "test", transfer_cache: Optional[dict] = None,
                        queries: int = SQUARE_QUERIES, precision: str = "auto",
                        progress: Union[bool, dict] = True) -> list[dict]:
    """Top-1 of ``model`` under each attack × eps × gradient source, and the worst case per eps: the
    ``robustness`` block of a card. Each FGSM and PGD row also counts the images whose gradient from its source
    ``vanished`` (:func:`vanished`): its top-1 is then an upper bound. Square and worst rows have no gradient source
    and no ``vanished``.

    ``eps``: the radii of every attack (default: :func:`default_eps` of each). FGSM and PGD give a row per
    gradient source, Square one (``"queries"``). Each row keeps which images it fooled (``"fooled"``,
    :func:`pack_bits`), so :func:`with_worst` can add a ``"worst"`` row per eps: an image counts as robust only
    if no row fooled it. ``transfer_model`` is the bp model of the same architecture and data (needed for
    ``"transfer"``); its adversarial examples depend only on it and the images, so ``transfer_cache`` (a dict)
    may be shared by targets attacked on the same images: each is crafted once. ``precision``: ``"auto"`` lets
    Square query in :func:`fastest_precision`, ``"fp32"`` keeps fp32. ``progress``: a tqdm bar (a dict: its
    options).

    Example::

        >>> block = evaluate_robustness(model, images, labels, transfer_model=bp, attacks=["pgd"], eps=[0.05])
        >>> [(r["gradient"], r["top1"]) for r in block[:3]]    # lenet_fa.fashion_mnist, the 10,000 test images
        [('exact', 26.43), ('rule', 78.99), ('transfer', 76.16)]
        >>> block[3]["attack"], block[3]["over"]              # none of the three fooled the images it counts
        ('worst', ['pgd/exact', 'pgd/rule', 'pgd/transfer'])
    """
    attacks = check_attacks(attacks)
    gradients = check_gradients(gradients) if set(attacks) & set(GRADIENT_ATTACKS) else []  # Square has none
    radii = {attack: check_eps(eps if eps is not None else default_eps(attack)) for attack in attacks}
    check_queries(queries), check_precision(precision)
    if "transfer" in gradients and transfer_model is None and set(attacks) & set(GRADIENT_ATTACKS):
        raise ValueError("the transfer gradient needs transfer_model= (the bp model of the same architecture "
                         "and data)")
    if mean is None or std is None:
        mean, std = normalisation(model)
    transfer_cache = {} if transfer_cache is None else transfer_cache
    bp_mean, bp_std = (normalisation(transfer_model) if hasattr(transfer_model, "pretrained_cfg")
                       else (mean, std))
    tasks = [(attack, e, gradient) for attack in attacks for e in radii[attack]
             for gradient in (("queries",) if attack == "square" else gradients)]
    if precision == "auto":
        precision = (fastest_precision(model, images, mean=mean, std=std, batch_size=batch_size)
                     if "square" in attacks else "fp32")
    masked = {g: vanished(transfer_model if g == "transfer" else model, images, labels,
                          mean=bp_mean if g == "transfer" else mean, std=bp_std if g == "transfer" else std,
                          gradient="rule" if g == "rule" else "exact", batch_size=batch_size) for g in gradients}
    from tqdm.auto import tqdm

    block = []
    bar = dict(desc="attacks", unit="attack", disable=None if progress else True)  # off when not a terminal
    for attack, e, gradient in tqdm(tasks, **{**bar, **(progress if isinstance(progress, dict) else {})}):
        source = transfer_model if gradient == "transfer" else model
        if source is transfer_model and gradient in ("exact", "transfer"):
            # the bp model's white-box examples: crafted once for every target (and for a bp target that
            # passes itself as transfer_model, its exact and transfer attacks are this one attack)
            key = (attack, e, seed)
            if key not in transfer_cache:
                transfer_cache[key] = craft(source, images, labels, attack, e, mean=bp_mean, std=bp_std,
                                            gradient="exact", seed=seed, batch_size=batch_size)
            adversarial = transfer_cache[key]
        else:
            adversarial = craft(model, images, labels, attack, e, mean=mean, std=std,
                                gradient=gradient, seed=seed,
                                batch_size=batch_size, queries=queries, precision=precision)
        fooled = predict(model, adversarial, mean=mean, std=std, batch_size=batch_size) != labels.cpu()
        row = {"attack": attack, "eps": e, "gradient": gradient, "top1": round(100.0 - _percent(fooled), 4),
               "images": len(labels), "seed": seed, "split": split}
        if attack == "square":
            row.update(queries=queries, precision=precision)
        else:  # a gradient source: how many images it cannot move
            row["vanished"] = masked[gradient]
        block.append({**row, "fooled": pack_bits(fooled)})
    return with_worst(block)


def _percent(fooled) -> float:
    return 100.0 * float(fooled.sum()) / max(len(fooled), 1)


def with_worst(block: list[dict]) -> list[dict]:
    """``block``'s attack rows, then a ``"worst"`` row per eps (``gradient`` ``"all"``): the top-1 over images
    that no row at that eps fooled, from the rows that kept their per-image outcomes (``"fooled"``) on the same
    images (the most of them, where runs of several sizes were merged); ``"over"`` names those rows. Rows from
    before per-image outcomes were kept join no worst case.

    Example::

        >>> [(r["eps"], r["over"]) for r in with_worst(block) if r["attack"] == "worst"]
        [(0.05, ['pgd/exact', 'square/queries'])]
    """
    rows = [r for r in block if r["attack"] != "worst"]
    worst = []
    for eps in dict.fromkeys(round(r["eps"], 12) for r in rows if "fooled" in r):
        joined = [r for r in rows if "fooled" in r and round(r["eps"], 12) == eps]
        images, split = max((r["images"], r.get("split", "test")) for r in joined)
        joined = [r for r in joined if (r["images"], r.get("split", "test")) == (images, split)]
        fooled = np.logical_or.reduce([unpack_bits(r["fooled"], images) for r in joined])
        worst.append({"attack": "worst", "eps": joined[0]["eps"], "gradient": "all",
                      "top1": round(100.0 - _percent(fooled), 4), "images": images, "seed": joined[0]["seed"],
                      "split": split, "over": [f"{r['attack']}/{r['gradient']}" for r in joined],
                      "fooled": pack_bits(torch.from_numpy(fooled))})
    return rows + worst


def without_outcomes(block: Optional[list[dict]]) -> Optional[list[dict]]:
    """``block`` without its per-image outcomes: what a card's config and the index carry (metrics.json keeps them)."""
    return None if block is None else [{k: v for k, v in r.items() if k != "fooled"} for r in block]


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


def check_queries(queries: int) -> int:
    if isinstance(queries, bool) or not isinstance(queries, int) or queries < 1:
        raise ConfigError(f"--queries must be a positive number of queries an image, got {queries!r} "
                          f"(AutoAttack's Square: {SQUARE_QUERIES})")
    return queries


def check_precision(precision: str) -> str:
    return _check_names([precision], PRECISIONS, "precision")[0]


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
