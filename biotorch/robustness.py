"""Adversarial robustness of a checkpoint: FGSM and PGD-10 in pixel space, with three gradient sources.

The attacks come from the Adversarial Robustness Toolbox (``art``); they run in pixel space ([0, 1], ``eps``
in pixel units, L∞) on the model with the checkpoint's normalisation inside it, in eval mode, from a fixed
seed. What differs is whose gradient crafts the examples:

* ``exact``: the target's true input gradient (white box, inside :func:`biotorch.exact_gradients`);
* ``rule``: the gradient the target's own learning rule sends to the input (the model as it trains). For fa,
  usf, frsf, brsf, wm and kp it is backprop with each layer's feedback B in place of W. For dfa it is the
  first layer's direct signal e·B₁: the output error e projected to image shape by a fixed random B₁. It
  depends on the image only through e, never on the weights: a class-dependent random pattern;
* ``transfer``: examples crafted on the bp checkpoint of the same architecture and data
  (``{arch}_bp.{tag}``) with its exact gradient, then shown to the target, whose gradient is never used.

For a bp target the three are the same attack. ``metrics.json`` of a card holds the results under
``"robustness"``: a list of ``{attack, eps, gradient, top1, images, seed, split}``.

Example::

    >>> from biotorch import robustness
    >>> model = biotorch.create_model("lenet_fa.fashion_mnist", pretrained=True)
    >>> bp = biotorch.create_model("lenet_bp.fashion_mnist", pretrained=True)
    >>> images, labels, split = robustness.load_images("fashion_mnist", limit=1000)   # floats in [0, 1]
    >>> block = robustness.evaluate_robustness(model, images, labels, transfer_model=bp, split=split)
    >>> len(block), sorted(block[0])                 # 2 attacks × 4 eps × 3 gradient sources
    (24, ['attack', 'eps', 'gradient', 'images', 'seed', 'split', 'top1'])
    >>> robustness.write_block("model_cards/lenet_fa.fashion_mnist", block)

    $ biotorch robustness lenet_fa.fashion_mnist --attack pgd --eps 0.05 --limit 1000 --json
"""
from __future__ import annotations

import contextlib
import difflib
import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from .convert import exact_gradients
from .data import DATASETS, load_samples
from .factory import create_model
from .files import SAMPLES, atomic_write
from .hub import CONFIG_NAME, MIRROR, folder_sha256, recorded_sha256
from .registry import get_pretrained_cfg, list_models
from .training import datasets
from .training.records import save_figure
from .training.runtime import resolve_device

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
        classifier = PyTorchClassifier(attacked, loss=nn.CrossEntropyLoss(), input_shape=tuple(images.shape[1:]),
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
    """Top-1 of ``model`` under each attack × eps × gradient source: the ``robustness`` block of a card.

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
                      "images": len(labels), "seed": seed, "split": split})
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


def load_images(dataset: str, data_dir=None, *, limit: Optional[int] = None, samples: bool = False,
                device=None, log=None) -> tuple[Tensor, Tensor, str]:
    """(images as floats in [0, 1], labels, split) of the test set, found as ``biotorch eval`` finds it
    (``data_dir``, ``$BIOTORCH_DATA``, the cache, system folders), else the sample images in ``samples/``.

    ``limit``: a fixed random sample of that many images (seed ``SUBSET_SEED``, in file order), the same for every
    model; the first N would be one class where the files are sorted by class (cifar10_jpeg's are).

    Example::

        >>> images, labels, split = load_images("fashion_mnist", limit=100)
        >>> images.shape, split
        (torch.Size([100, 1, 32, 32]), 'test')
    """

    folder = SAMPLES / dataset
    try:
        if samples:
            raise FileNotFoundError("--samples")
        images, labels = datasets.load(dataset, "test", data_dir)
        split = "test"
    except FileNotFoundError as error:
        if not (folder / "labels.csv").is_file():
            raise
        if not samples and log is not None:
            log(f"no {dataset} test set found ({' '.join(str(error).split())[:200]}); attacking the sample "
                f"images in {folder} instead")
        images, labels = load_samples(folder, dataset)
        split = "samples"
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be a positive number of images, got {limit}")
        if limit < len(labels):  # a fixed sample of every class: test files may come sorted by class
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SUBSET_SEED))
            keep = order[:limit].sort().values
            images, labels = images[keep], labels[keep]
    return images.to(device).float().div_(255), labels.to(device), split


# --------------------------------------------------------------------------------------------------------
# the card: metrics.json, model-index, README section, `biotorch info`


def write_block(card_dir: Union[str, Path], block: list[dict]) -> Path:
    """Put ``block`` under ``"robustness"`` in ``card_dir/metrics.json`` (atomically); returns the file.

    ``scripts/publish.py`` keeps the block when it rebuilds the card with the same weights, and renders it.

    Example::

        >>> write_block("model_cards/lenet_fa.fashion_mnist", block)
    """
    path = Path(card_dir) / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: write robustness into a card folder built by scripts/publish.py")
    metrics = json.loads(path.read_text())
    metrics["robustness"] = block
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2) + "\n"))


def carried_over(card_dir: Path, weights_sha256: str) -> dict:
    """``{"robustness": block}`` from the card now in ``card_dir`` if it holds the same weights, else ``{}``:
    results measured on other weights are dropped when a card is rebuilt."""
    config, metrics = Path(card_dir) / CONFIG_NAME, Path(card_dir) / "metrics.json"
    if not config.is_file() or not metrics.is_file():
        return {}
    block = json.loads(metrics.read_text()).get("robustness")
    return {"robustness": block} if block and folder_sha256(card_dir) == weights_sha256 else {}


def _pick(block: list[dict], attack: str, eps: float, gradient: str) -> Optional[dict]:
    return next((r for r in block if r["attack"] == attack and r["gradient"] == gradient
                 and abs(r["eps"] - eps) < 1e-12), None)


def _images(row: dict) -> str:
    return f"{row['images']:,} {row.get('split', 'test')} images"


def model_index(block: Optional[list[dict]], eps: float = HEADLINE_EPS) -> list[dict]:
    """EvalResult fields (without task and dataset) for the card's model-index: white-box top-1 under each
    attack at ``eps``, on the test set only (sample-image results stay in the card's table).

    Example::

        >>> [EvalResult(task_type=..., dataset_type=..., dataset_name=..., **r) for r in model_index(block)]
    """
    results = []
    for attack in ATTACKS:
        row = _pick(block or [], attack, eps, "exact")
        if row is None or row.get("split", "test") != "test":
            continue
        results.append(dict(dataset_split="test", metric_type="accuracy", metric_value=row["top1"],
                            metric_name=f"top-1 accuracy under {ATTACK_TITLES[attack]}, L∞ ε={eps:g} (test, %)",
                            metric_config=f"{attack}-linf-eps{eps:g}",
                            metric_args={"attack": attack, "eps": eps, "norm": "Linf", "gradient": "exact",
                                         "steps": PGD_STEPS if attack == "pgd" else 1, "seed": row["seed"],
                                         "images": row["images"]}))
    return results


def info_lines(block: Optional[list[dict]], eps: float = HEADLINE_EPS) -> list[str]:
    """One line per attack at ``eps`` for ``biotorch info``."""
    lines = []
    for attack in ATTACKS:
        rows = [(g, _pick(block or [], attack, eps, g)) for g in GRADIENTS]
        rows = [(g, r) for g, r in rows if r is not None]
        if rows:
            numbers = ", ".join(f"{g} {r['top1']:.2f}" for g, r in rows)
            lines.append(f"{ATTACK_TITLES[attack]} ε={eps:g} top-1 %: {numbers} ({_images(rows[0][1])})")
    return lines


def _bp_block(cfg: dict, cards_dirs: Sequence[Path]) -> Optional[list[dict]]:
    for cards_dir in cards_dirs:
        path = Path(cards_dir) / f"{cfg['arch']}_bp.{cfg['tag']}" / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text()).get("robustness")
    return None


def plot(path: Union[str, Path], block: list[dict], bp_block: Optional[list[dict]], title: str) -> None:
    """Top-1 against eps, one panel per attack: a line per gradient source, and the bp model's own
    exact-gradient curve for comparison."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    attacks = [a for a in ATTACKS if any(r["attack"] == a for r in block)]
    fig, axes = plt.subplots(1, len(attacks), figsize=(5 * len(attacks), 4), squeeze=False)
    for ax, attack in zip(axes[0], attacks):
        for gradient, style in zip(GRADIENTS, ("o-", "s--", "^:")):
            rows = sorted((r for r in block if r["attack"] == attack and r["gradient"] == gradient),
                          key=lambda r: r["eps"])
            if rows:
                ax.plot([r["eps"] for r in rows], [r["top1"] for r in rows], style, label=GRADIENT_TITLES[gradient])
        bp_rows = sorted((r for r in bp_block or [] if r["attack"] == attack and r["gradient"] == "exact"),
                         key=lambda r: r["eps"])
        if bp_rows:
            ax.plot([r["eps"] for r in bp_rows], [r["top1"] for r in bp_rows], "x-", color="grey",
                    label="bp model, exact gradient")
        ax.set(xlabel="ε (L∞, pixels in [0, 1])", ylabel="top-1 (%)", title=ATTACK_TITLES[attack], ylim=(0, 100))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path, title)


def card_section(cfg: dict, folder: Union[str, Path], cards_dirs: Sequence[Path] = (MIRROR,)) -> str:
    """The card's "Adversarial robustness" section (markdown) from ``cfg["metrics"]["robustness"]``; draws
    ``folder/robustness.png``. Empty without a block. The bp curve comes from ``{arch}_bp.{tag}`` in
    ``cards_dirs``.
    """
    block = cfg["metrics"].get("robustness")
    if not block:
        return ""
    is_bp = cfg["rule"] == "bp"
    bp_block = None if is_bp else _bp_block(cfg, cards_dirs)
    plot(Path(folder) / "robustness.png", block, bp_block, f"{cfg['name']}: adversarial robustness")
    gradients = [g for g in GRADIENTS if any(r["gradient"] == g for r in block)]
    header = ["attack", "ε"] + [f"{GRADIENT_TITLES[g]} top-1 %" for g in gradients]
    if bp_block:
        header.append(f"{cfg['arch']}_bp, exact gradient top-1 %")
    keys = sorted({(r["attack"], r["eps"]) for r in block}, key=lambda k: (ATTACKS.index(k[0]), k[1]))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for attack, eps in keys:
        cells = [ATTACK_TITLES[attack], f"{eps:g}"]
        for source, gradient in [(block, g) for g in gradients] + ([(bp_block, "exact")] if bp_block else []):
            row = _pick(source, attack, eps, gradient)
            cells.append("–" if row is None else f"{row['top1']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    same = " For this bp model the three are one attack." if is_bp else ""
    bp_note = (f"The grey curve is `{cfg['arch']}_bp.{cfg['tag']}` under its own exact gradient "
               f"({_images(bp_block[0])}). " if bp_block else "")
    test_size = DATASETS[cfg["dataset"]].test_size if cfg.get("dataset") in DATASETS else None
    sample = (f" (a fixed sample of the {test_size:,}, every class: seed {SUBSET_SEED})"
              if block[0].get("split", "test") == "test" and test_size and block[0]["images"] < test_size else "")
    return f"""
## Adversarial robustness

Top-1 on {_images(block[0])}{sample} under L∞ attacks in pixel space (pixels in [0, 1], ε in pixel units, the
checkpoint's normalisation inside the attacked model; seed {block[0]['seed']}): FGSM, and PGD with {PGD_STEPS}
steps of {PGD_STEP_SIZE:g}·ε from a random start, from the Adversarial Robustness Toolbox. Gradient sources:
*exact*, the true gradient of this model (white box); *the rule's gradient*, what this model's learning rule
sends back to its input; *transfer*, examples crafted on `{cfg['arch']}_bp.{cfg['tag']}` with its exact gradient.{same}

{chr(10).join(lines)}

![top-1 against ε per gradient source](robustness.png)

{bp_note}Reproduce: `biotorch robustness {cfg['name']}`.
"""


# --------------------------------------------------------------------------------------------------------
# command line: `biotorch robustness`


def _names(patterns: Sequence[str]) -> list[str]:

    names = []
    for pattern in patterns:
        matches = list_models(pattern, pretrained=True) if any(c in pattern for c in "*?[") else None
        if matches == []:
            raise ValueError(f"no pretrained model matches {pattern!r}; see `biotorch list --pretrained`")
        names += matches or [get_pretrained_cfg(pattern).name]
    return list(dict.fromkeys(names))


def _load(name: str, device: torch.device) -> nn.Module:

    model = create_model(name, pretrained=True, device=device)
    # channels_last lets oneDNN run the convolutions' input gradients ~1.7x faster on CPU (LeNet, torch 2.14)
    return model.to(memory_format=torch.channels_last) if device.type == "cpu" else model


def _card_folder(cards_dir: str, cfg) -> Path:
    folder = Path(cards_dir) / cfg.name
    if folder_sha256(folder) != recorded_sha256({"files": cfg.files}):
        raise ValueError(f"{folder} does not hold the published weights of {cfg.name}: --write takes the folder "
                         "holding the card folders (e.g. model_cards)")
    return folder


def _attack_all(names: list[str], args, worker: int = 0) -> list[dict]:
    """One process: the targets in turn, sharing each bp model and the examples crafted on it. With
    ``--write`` each block is written as soon as its model is done, so a run cut short keeps what it did."""

    device = resolve_device(args.device)
    if device.type == "cpu":
        # LeNet-sized attacks gain nothing from a second intra-op thread and lose up to 6x when the cores are
        # shared (measured on 2 cores, torch 2.14): --jobs uses the cores with one process each.
        torch.set_num_threads(args.threads)
    log = lambda message: print(f"biotorch robustness: {message}", file=sys.stderr)  # noqa: E731
    attacks, eps, gradients = check_attacks(args.attack), check_eps(args.eps), check_gradients(args.gradient)
    sources: dict[str, tuple[nn.Module, dict]] = {}  # the bp model of each target, and its crafted examples
    data: dict[str, tuple[Tensor, Tensor, str]] = {}  # loaded once per dataset
    outputs = []
    for name in names:
        cfg = get_pretrained_cfg(name)
        model = sources[cfg.name][0] if cfg.name in sources else _load(cfg.name, device)
        if cfg.dataset not in data:
            data[cfg.dataset] = load_images(cfg.dataset, args.data_dir, limit=args.limit, samples=args.samples,
                                            device=device, log=log)
        images, labels, split = data[cfg.dataset]
        transfer = None
        if "transfer" in gradients:
            bp_name = f"{cfg.arch}_bp.{cfg.tag}"
            if bp_name not in sources:  # a bp target is its own transfer source: one attack, crafted once
                try:
                    bp = model if cfg.name == bp_name else _load(get_pretrained_cfg(bp_name).name, device)
                except ValueError:
                    raise ValueError(f"the transfer gradient needs the bp checkpoint {bp_name}, which is not "
                                     "published; choose --gradient exact,rule") from None
                sources[bp_name] = (bp, {})
            transfer = sources[bp_name]
        clean = accuracy(model, images, labels, batch_size=args.batch_size)
        block = evaluate_robustness(model, images, labels, transfer_model=transfer and transfer[0],
                                    attacks=attacks, eps=eps, gradients=gradients, seed=args.seed,
                                    batch_size=args.batch_size, split=split,
                                    transfer_cache=transfer and transfer[1],
                                    progress=False if args.json else {"desc": cfg.name, "position": worker})
        outputs.append({"model": cfg.name, "dataset": cfg.dataset, "split": split, "images": len(labels),
                        "clean_top1": clean, "robustness": block})
        if args.write:
            log(f"wrote {write_block(_card_folder(args.write, cfg), block)}")
    return outputs


def run_robustness(args) -> int:

    check_attacks(args.attack), check_eps(args.eps), check_gradients(args.gradient)
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive number of images, got {args.limit}")
    names = _names(args.name)
    for name in names if args.write else ():  # every card folder checked before any attack
        _card_folder(args.write, get_pretrained_cfg(name))
    jobs = max(1, min(args.jobs, len(names)))
    if jobs > 1 and resolve_device(args.device).type != "cpu":
        raise ValueError("--jobs runs several CPU processes; on a GPU use one (drop --jobs)")
    if jobs == 1:
        outputs = _attack_all(names, args)
    else:  # each process attacks every jobs-th target (and crafts its own transfer examples once)

        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            parts = pool.map(_attack_all, [names[i::jobs] for i in range(jobs)], [args] * jobs, range(jobs))
            by_name = {output["model"]: output for part in parts for output in part}
        outputs = [by_name[name] for name in names]
    for output in outputs:
        if not args.json:
            _print_table(output)
    if args.json:
        print(json.dumps(outputs[0] if len(outputs) == 1 else outputs, indent=2))
    return 0


def _print_table(result: dict) -> None:
    block = result["robustness"]
    gradients = [g for g in GRADIENTS if any(r["gradient"] == g for r in block)]
    print(f"{result['model']} on {result['dataset']} {result['split']} ({result['images']:,} images): "
          f"clean top-1 {result['clean_top1']:.2f}%")
    print(f"  {'attack':<8} {'eps':>6}  " + "  ".join(f"{g:>8}" for g in gradients))
    for attack, eps in dict.fromkeys((r["attack"], r["eps"]) for r in block):
        cells = [_pick(block, attack, eps, g) for g in gradients]
        print(f"  {ATTACK_TITLES[attack]:<8} {eps:>6g}  " + "  ".join(f"{c['top1']:>7.2f}%" for c in cells))


def add_commands(subparsers) -> None:
    """Register ``biotorch robustness`` on the ``biotorch`` command line."""
    parser = subparsers.add_parser(
        "robustness", help="top-1 of a pretrained model under FGSM/PGD with exact, rule or transfer gradients",
        description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="+", help="pretrained name(s) or glob(s), e.g. lenet_fa.fashion_mnist or "
                        "'lenet_*.fashion_mnist' (transfer examples are crafted once for all)")
    parser.add_argument("--attack", default=",".join(ATTACKS), help="comma-separated: fgsm,pgd (PGD-10)")
    parser.add_argument("--eps", default=",".join(map(str, DEFAULT_EPS)),
                        help="L∞ radii in pixel units (pixels in [0, 1]), comma-separated")
    parser.add_argument("--gradient", default=",".join(GRADIENTS),
                        help="comma-separated gradient sources: exact, rule, transfer (from the bp model)")
    parser.add_argument("--limit", type=int, help="attack N images only: a fixed random sample of the test set, the "
                                                   "same for every model")
    parser.add_argument("--data-dir", help="folder holding the dataset files (else $BIOTORCH_DATA, the cache, "
                        "system folders; the sample images in samples/ when none has the test set)")
    parser.add_argument("--samples", action="store_true", help="attack the sample images in samples/<dataset>")
    parser.add_argument("--seed", type=int, default=0, help="seed of PGD's random start (default 0)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (default 1: as fast for "
                        "small models, and far faster on shared cores)")
    parser.add_argument("--jobs", type=int, default=1, help="CPU processes, each attacking a share of the models "
                        "(e.g. 2 on a 2-core machine)")
    parser.add_argument("--write", metavar="CARDS_DIR", help="also write each block into "
                        "CARDS_DIR/<name>/metrics.json (e.g. model_cards; the card must hold the same weights)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON (no progress bar)")
    parser.set_defaults(handler=run_robustness)
