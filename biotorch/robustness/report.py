"""The robustness block of a card: ``metrics.json``'s ``"robustness"``, the model index, ``biotorch info``'s
lines, the plot and the card's section."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

from ..data import DATASETS
from ..files import FolderLock, atomic_write
from ..hub import CONFIG_NAME, MIRROR, folder_sha256
from ..training.records import save_figure
from .attacks import (ATTACK_TITLES, ATTACKS, GRADIENT_ATTACKS, GRADIENT_TITLES, GRADIENTS, HEADLINE_EPS,
                      PGD_STEP_SIZE, PGD_STEPS, SOURCES, SQUARE_EPS, SUBSET_SEED, eps_text, with_worst)

KINDS = (*ATTACKS, "worst")  # the rows of a block, in order
WHITE_BOX = {"fgsm": "exact", "pgd": "exact", "square": "queries", "worst": "all"}  # each kind's strongest source
INDEX_EPS = tuple(sorted({*SQUARE_EPS, HEADLINE_EPS}))  # the radii the model-index reports


def merge_blocks(old: Optional[list[dict]], new: list[dict]) -> list[dict]:
    """``old`` with ``new``'s cells added: a cell (attack, radius, gradient) already there is replaced only by one
    measured on at least as many images (and for Square as many queries), so a narrower run (one attack,
    ``--limit 20``) never drops or degrades a wider block. Cells in the order the attacks, radii and gradient
    sources are listed; the worst-case rows recomputed from the cells (:func:`with_worst`), so an attack run
    later joins the worst case of those run before it."""
    cells = {(r["attack"], round(r["eps"], 12), r["gradient"]): r for r in old or () if r["attack"] != "worst"}
    strength = lambda row: (row.get("images", 0), row.get("queries", 0))  # noqa: E731
    for row in new:
        key = (row["attack"], round(row["eps"], 12), row["gradient"])
        if row["attack"] != "worst" and (key not in cells or strength(row) >= strength(cells[key])):
            cells[key] = row
    order = lambda key: (KINDS.index(key[0]) if key[0] in KINDS else len(KINDS), key[1],  # noqa: E731
                         SOURCES.index(key[2]) if key[2] in SOURCES else len(SOURCES))
    return with_worst([cells[key] for key in sorted(cells, key=order)])


def write_block(card_dir: Union[str, Path], block: list[dict], weights_sha256: Optional[str] = None) -> Path:
    """Merge ``block`` into ``"robustness"`` of ``card_dir/metrics.json`` (:func:`merge_blocks`, atomically, under
    the cards folder's lock); returns the file. ``weights_sha256``: the weights attacked; refused if the card holds
    others by now (republished meanwhile).

    ``scripts/publish.py`` keeps the block when it rebuilds the card with the same weights, and renders it.

    Example::

        >>> write_block("model_cards/lenet_fa.fashion_mnist", block)
    """
    path = Path(card_dir) / "metrics.json"
    with FolderLock(Path(card_dir).parent, wait=True):  # the cards folder's writers take turns
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: write robustness into a card folder built by "
                                    "scripts/publish.py")
        if weights_sha256 is not None and folder_sha256(card_dir) != weights_sha256:
            raise ValueError(f"{card_dir} was republished with other weights while they were attacked: its block "
                             "is not written (attack the new weights)")
        metrics = json.loads(path.read_text())
        metrics["robustness"] = merge_blocks(metrics.get("robustness"), block)
        return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2) + "\n"))


def carried_over(card_dir: Path, weights_sha256: str) -> dict:
    """``{"robustness": block}`` from the card now in ``card_dir`` if it holds the same weights, else ``{}``:
    results measured on other weights are dropped when a card is rebuilt."""
    config, metrics = Path(card_dir) / CONFIG_NAME, Path(card_dir) / "metrics.json"
    if not config.is_file() or not metrics.is_file():
        return {}
    block = json.loads(metrics.read_text()).get("robustness")
    return {"robustness": block} if block and folder_sha256(card_dir) == weights_sha256 else {}


def find_row(block: list[dict], attack: str, eps: float, gradient: str) -> Optional[dict]:
    """The row of ``block`` for one attack, radius and gradient source; None if it was not run."""
    return next((r for r in block if r["attack"] == attack and r["gradient"] == gradient
                 and abs(r["eps"] - eps) < 1e-12), None)


def _images(row: dict) -> str:
    return f"{row['images']:,} {row.get('split', 'test')} images"


def _title(row: dict) -> str:
    if row["attack"] == "square":
        return f"Square ({row['queries']:,} queries)"
    if row["attack"] == "worst":
        return f"the worst case over {', '.join(row['over'])}"
    return ATTACK_TITLES[row["attack"]]


def vanished_lines(block: Optional[list[dict]]) -> list[str]:
    """One line per gradient source whose gradient vanished on some images (gradient masking): the command's warning,
    the card's note. Only FGSM and PGD rows count ``vanished``; Square's and the worst rows have no gradient source."""
    whose = {"exact": "the exact gradient", "rule": "the rule's gradient", "transfer": "the bp model's gradient"}
    rows = {r["gradient"]: r for r in block or () if r.get("vanished")}
    return [f"{whose[g]} vanished on {rows[g]['vanished']:,} of {rows[g]['images']:,} images: these numbers are upper "
            "bounds" for g in GRADIENTS if g in rows]


def model_index(block: Optional[list[dict]], radii: Sequence[float] = INDEX_EPS) -> list[dict]:
    """EvalResult fields (without task and dataset) for the card's model-index: top-1 under each attack at each
    of ``radii`` with its strongest source (:data:`WHITE_BOX`: the exact gradient for FGSM and PGD), and the worst
    case, on the test set only (sample-image results stay in the card's table).

    Example::

        >>> [EvalResult(task_type=..., dataset_type=..., dataset_name=..., **r) for r in model_index(block)]
    """
    results = []
    for eps in radii:
        for attack in KINDS:
            row = find_row(block or [], attack, eps, WHITE_BOX[attack])
            if row is None or row.get("split", "test") != "test":
                continue
            details = ({"steps": PGD_STEPS if attack == "pgd" else 1} if attack in GRADIENT_ATTACKS else
                       {"queries": row["queries"]} if attack == "square" else {"over": row["over"]})
            results.append(dict(dataset_split="test", metric_type="accuracy", metric_value=row["top1"],
                                metric_name=f"top-1 accuracy under {_title(row)}, L∞ ε={eps_text(eps)} (test, %)",
                                metric_config=f"{attack}-linf-eps{eps_text(eps).replace('/', '-')}",
                                metric_args={"attack": attack, "eps": eps, "norm": "Linf", "gradient": row["gradient"],
                                             **details, "seed": row["seed"], "images": row["images"]}))
    return results


def info_lines(block: Optional[list[dict]], eps: float = HEADLINE_EPS) -> list[str]:
    """One line per attack at ``eps`` for ``biotorch info``."""
    lines = []
    for attack in KINDS:
        rows = [(g, find_row(block or [], attack, eps, g)) for g in SOURCES]
        rows = [(g, r) for g, r in rows if r is not None]
        if rows:
            numbers = ", ".join(f"{g} {r['top1']:.2f}" for g, r in rows)
            lines.append(f"{ATTACK_TITLES[attack]} ε={eps_text(eps)} top-1 %: {numbers} ({_images(rows[0][1])})")
    return lines


def _bp_block(cfg: dict, cards_dirs: Sequence[Path]) -> Optional[list[dict]]:
    for cards_dir in cards_dirs:
        path = Path(cards_dir) / f"{cfg['arch']}_bp.{cfg['tag']}" / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text()).get("robustness")
    return None


def plot(path: Union[str, Path], block: list[dict], bp_block: Optional[list[dict]], title: str) -> None:
    """Top-1 against eps, one panel per gradient attack: a line per gradient source, Square (dashed black) and
    the worst case over every attack (solid black) beside them, and the bp model's own exact-gradient curve for
    comparison (one Square panel when no gradient attack was run)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(ax, rows, attack, gradient, style, label, **kwargs):
        rows = sorted((r for r in rows or [] if r["attack"] == attack and r["gradient"] == gradient),
                      key=lambda r: r["eps"])
        if rows:
            ax.plot([r["eps"] for r in rows], [r["top1"] for r in rows], style, label=label, **kwargs)

    panels = [a for a in GRADIENT_ATTACKS if any(r["attack"] == a for r in block)] or ["square"]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, attack in zip(axes[0], panels):
        for gradient, style in zip(GRADIENTS, ("o-", "s--", "^:")):
            curve(ax, block, attack, gradient, style, GRADIENT_TITLES[gradient])
        curve(ax, block, "square", "queries", "D--", "Square (queries, no gradient)", color="black")
        curve(ax, block, "worst", "all", "*-", "worst case (every attack)", color="black", linewidth=2)
        curve(ax, bp_block, attack, WHITE_BOX[attack], "x-", f"bp model, {GRADIENT_TITLES[WHITE_BOX[attack]]}",
              color="grey")
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
    sources = [g for g in SOURCES if any(r["gradient"] == g for r in block)]
    header = ["attack", "ε"] + [f"{GRADIENT_TITLES[g]} top-1 %" for g in sources]
    if bp_block:
        header.append(f"{cfg['arch']}_bp top-1 %")
    keys = sorted({(r["attack"], r["eps"]) for r in block}, key=lambda k: (KINDS.index(k[0]), k[1]))
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    for attack, eps in keys:
        cells = [ATTACK_TITLES[attack], eps_text(eps)]
        for source, gradient in [(block, g) for g in sources] + ([(bp_block, WHITE_BOX[attack])] if bp_block else []):
            row = find_row(source, attack, eps, gradient)
            cells.append("–" if row is None else f"{row['top1']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    same = " For this bp model the three are one attack." if is_bp else ""
    bp_note = (f"The last column and the grey curve are `{cfg['arch']}_bp.{cfg['tag']}` under the same attack (its "
               f"exact gradient for FGSM and PGD; {_images(bp_block[0])}). " if bp_block else "")
    square = next((r for r in block if r["attack"] == "square"), None)
    square_text = (f" Square (Andriushchenko et al. 2020, as in AutoAttack) uses no gradient: up to "
                   f"{square['queries']:,} queries an image of the model's outputs, random squares of ±ε kept when "
                   "they lower the true class's margin, stopping once the image is fooled; what no gradient can mask."
                   if square else "")
    worst = next((r for r in block if r["attack"] == "worst"), None)
    worst_text = (" *Worst case*: an image counts only if no attack and no gradient source at that ε fooled it "
                  "(over the rows that kept their per-image outcomes, on the same images)." if worst else "")
    masked = "".join(f"\n\n**Gradient masking**: {line} (an attack cannot move an image whose gradient is zero)."
                     for line in vanished_lines(block))
    test_size = DATASETS[cfg["dataset"]].test_size if cfg.get("dataset") in DATASETS else None
    sample = (f" (a fixed sample of the {test_size:,}, every class: seed {SUBSET_SEED})"
              if block[0].get("split", "test") == "test" and test_size and block[0]["images"] < test_size else "")
    return f"""
## Adversarial robustness

Top-1 on {_images(block[0])}{sample} under L∞ attacks in pixel space (pixels in [0, 1], ε in pixel units, the
checkpoint's normalisation inside the attacked model; seed {block[0]['seed']}): FGSM, and PGD with {PGD_STEPS}
steps of {PGD_STEP_SIZE:g}·ε from a random start, from the Adversarial Robustness Toolbox. Gradient sources:
*exact*, the true gradient of this model (white box); *the rule's gradient*, what this model's learning rule
sends back to its input; *transfer*, examples crafted on `{cfg['arch']}_bp.{cfg['tag']}` with its exact gradient.{same}{square_text}{worst_text}

{chr(10).join(lines)}{masked}

![top-1 against ε per gradient source](robustness.png)

{bp_note}Reproduce: `biotorch robustness {cfg['name']}{" --attack fgsm,pgd,square --eps 8/255,0.05" if square else ""}`.
"""


# --------------------------------------------------------------------------------------------------------
# command line: `biotorch robustness`
