"""Figures rebuilt from history files: accuracy and loss per epoch, and study overlays."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from .metrics import convergence_epoch  # noqa: E402
from .runs import atomic_write  # noqa: E402


def save_figure(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _column(history: Sequence[dict[str, Any]], key: str) -> list[float | None]:
    return [row.get(key) for row in history]


def _present(values: Sequence[float | None]) -> bool:
    return any(v is not None for v in values)


def accuracy_figure(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> int | None:
    """The report's graph: validation and test accuracy per epoch, convergence epoch marked."""
    epochs = _column(history, "epoch")
    val, test = _column(history, "val_acc"), _column(history, "test_acc")
    conv = convergence_epoch(val) if _present(val) else None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if _present(val):
        ax.plot(epochs, val, marker="o", ms=3, label="validation accuracy")
    ax.plot(epochs, test, marker="s", ms=3, label="test accuracy")
    if conv is not None:  # in the legend: a label on the plot hides behind it or falls off the right edge
        ax.axvline(conv, color="grey", ls="--", lw=1, label=f"converged: epoch {conv}")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title or "Accuracy per epoch")
    _integer_epochs(ax)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    save_figure(fig, path)
    return conv


def _integer_epochs(ax: Any) -> None:
    """Whole-epoch ticks, also for runs of a few epochs (matplotlib would put ticks at 1.5, 2.5...)."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def loss_figure(history: Sequence[dict[str, Any]], path: Path, title: str = "") -> None:
    epochs = _column(history, "epoch")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in (("train_loss", "training loss (epoch mean)"), ("val_loss", "validation loss"),
                       ("test_loss", "test loss")):
        values = _column(history, key)
        if _present(values):
            ax.plot(epochs, values, marker="o", ms=3, label=label)
    conv = convergence_epoch(_column(history, "val_acc")) if _present(_column(history, "val_acc")) else None
    if conv is not None:
        ax.axvline(conv, color="grey", ls="--", lw=1, label=f"converged (epoch {conv})")
    ax.set(xlabel="epoch", ylabel="cross-entropy", title=title or "Loss per epoch", yscale="log")
    _integer_epochs(ax)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="upper right")
    save_figure(fig, path)


def run_figures(history: Sequence[dict[str, Any]], run_dir: Path, name: str = "") -> int | None:
    """Write accuracy.png and loss.png into ``run_dir``; returns the convergence epoch."""
    conv = accuracy_figure(history, Path(run_dir) / "accuracy.png", f"{name}: accuracy per epoch" if name else "")
    loss_figure(history, Path(run_dir) / "loss.png", f"{name}: loss per epoch" if name else "")
    return conv


def overlay_figure(curves: dict[str, list[list[float]]], path: Path, ylabel: str = "validation accuracy (%)",
                   title: str = "") -> None:
    """One line per label (the mean over its seeds) with a band from the min to the max seed."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, runs in curves.items():
        n = min(len(r) for r in runs)
        cols = [[r[i] for r in runs] for i in range(n)]
        mean = [sum(c) / len(c) for c in cols]
        x = list(range(1, n + 1))
        (line,) = ax.plot(x, mean, lw=1.5, label=label)
        if len(runs) > 1:
            ax.fill_between(x, [min(c) for c in cols], [max(c) for c in cols], color=line.get_color(), alpha=0.15)
    ax.set(xlabel="epoch", ylabel=ylabel, title=title)
    _integer_epochs(ax)
    lo = min(min(r[len(r) // 3:] or r) for runs in curves.values() for r in runs)
    ax.set_ylim(max(lo - 0.3, 0), None)
    ax.grid(alpha=0.3)
    # below the axes, in columns: readable at any number of configs and never over the curves
    ax.legend(fontsize=10, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2 if len(curves) > 4 else 1,
              frameon=False)
    save_figure(fig, path)
