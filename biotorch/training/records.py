"""What a run leaves beside its weights: history (CSV, JSON), alignment, metrics, plots, TensorBoard.

Every file is written atomically (:mod:`biotorch.files`), so a crash never leaves half a file.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from ..files import write_bytes, write_json, write_text

HISTORY_COLUMNS = ("epoch", "train_loss", "train_top1", "val_loss", "val_top1", "lr", "epoch_time_s")


def write_history(run_dir, history: list[dict]) -> None:
    """``history.csv`` and ``history.json``: one row per epoch (val columns empty where not validated)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in HISTORY_COLUMNS})
    write_text(Path(run_dir) / "history.csv", buffer.getvalue())
    write_json(Path(run_dir) / "history.json", history)


def plot_curves(path, history: list[dict], title: str) -> None:
    """Loss and top-1 (train, validation) against epochs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_top1) = plt.subplots(1, 2, figsize=(10, 4))
    epochs = [r["epoch"] for r in history]
    for key, ax, label in (("train_loss", ax_loss, "train"), ("train_top1", ax_top1, "train")):
        ax.plot(epochs, [r[key] for r in history], label=label)
    validated = [r for r in history if r.get("val_top1") is not None]
    ax_loss.plot([r["epoch"] for r in validated], [r["val_loss"] for r in validated], "o-", label="val")
    ax_top1.plot([r["epoch"] for r in validated], [r["val_top1"] for r in validated], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_top1.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy")
    for ax in (ax_loss, ax_top1):
        ax.legend()
        ax.grid(alpha=0.3)
    save_figure(fig, path, title)


def save_figure(fig, path, title: str) -> None:
    """Title, lay out and write a matplotlib figure as PNG (atomically), then close it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())  # atomic: a crash never leaves half a PNG


def plot_alignment(path, records: list[dict], title: str) -> None:
    """Per layer: angle between W and its feedback, and cosine of the rule's gradient with the true one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_angle, ax_grad) = plt.subplots(1, 2, figsize=(11, 4))
    layers = list(records[-1]["layers"]) if records else []
    epochs = [r["epoch"] for r in records]
    for name in layers:
        angles = [r["layers"].get(name, {}).get("angle") for r in records]
        cosines = [r["layers"].get(name, {}).get("gradient_cosine") for r in records]
        if any(a is not None for a in angles):
            ax_angle.plot(epochs, [math.nan if a is None else a for a in angles], label=name)
        ax_grad.plot(epochs, [math.nan if c is None else c for c in cosines], label=name)
    ax_angle.set(xlabel="epoch", ylabel="degrees", title="angle(W, feedback)")
    ax_grad.set(xlabel="epoch", ylabel="cosine", title="rule gradient vs true gradient")
    for ax in (ax_angle, ax_grad):
        ax.grid(alpha=0.3)
    if 0 < len(layers) <= 24:
        ax_grad.legend(fontsize=6, ncol=2)
    save_figure(fig, path, title)


class TensorBoard:
    """Scalars to TensorBoard when ``torch.utils.tensorboard`` works; silently nothing otherwise."""

    def __init__(self, log_dir, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(log_dir))
            except Exception:  # tensorboard not installed: the CSV/JSON records still hold everything
                self.writer = None

    def epoch(self, row: dict) -> None:
        if self.writer is None:
            return
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(key, value, row["epoch"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
