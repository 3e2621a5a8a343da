"""Per-epoch loss and accuracy, the convergence rule, model selection on validation and the reproduce gate."""

from __future__ import annotations

import contextlib
import csv
import math
from collections.abc import Sequence
from importlib import resources
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Convergence rule (documented in docs/convergence.md): the plateau is the mean validation accuracy of
# the last WINDOW epochs; training has converged from the first epoch after which every validation
# accuracy stays within +-BAND percentage points of that plateau.
WINDOW = 5
BAND = 0.25


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast (fp32 master weights) or nothing."""
    if precision == "bf16":
        # no weight-cast cache: each cast is used once per step anyway, and CUDA graph capture needs it off
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


@torch.inference_mode()
def loss_and_accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 10000, precision: str = "fp32"
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in percent of ``model`` on images x (N, 1, 28, 28) and labels y (N,), in
    eval mode, ``batch_size`` images at a time (the per-epoch figures of a run)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.int64, device=x.device)
    for i in range(0, len(x), batch_size):
        with autocast(x.device, precision):
            logits = model(x[i : i + batch_size])
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y[i : i + batch_size], reduction="sum")
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum()
    model.train(was_training)
    return loss_sum.item() / len(x), 100.0 * correct.item() / len(x)


@torch.inference_mode()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 10000) -> torch.Tensor:
    """Softmax probabilities (N, 10) in eval mode."""
    was_training = model.training
    model.eval()
    out = torch.cat([torch.softmax(model(x[i : i + batch_size]).float(), 1) for i in range(0, len(x), batch_size)])
    model.train(was_training)
    return out


def convergence_epoch(val_acc: Sequence[float | None], window: int = WINDOW, band: float = BAND) -> int | None:
    """The 1-based epoch from which validation accuracy stays within ``band`` points of its final plateau.

    The plateau is the mean of the last ``window`` epochs. None when there are fewer than ``window``
    epochs or any value is missing.
    """
    if len(val_acc) < window or any(v is None or not math.isfinite(v) for v in val_acc):
        return None
    acc = [float(v) for v in val_acc if v is not None]  # all present (checked above)
    plateau = sum(acc[-window:]) / window
    epoch = len(acc)
    while epoch > 1 and abs(acc[epoch - 2] - plateau) <= band:
        epoch -= 1
    return epoch


def best_epoch(val_acc: Sequence[float]) -> int:
    """1-based epoch of the highest validation accuracy (the earliest on ties): model selection on validation."""
    best = max(range(len(val_acc)), key=lambda i: (val_acc[i], -i))
    return best + 1


# ---------------------------------------------------------------- histories (pure functions of the rows)


def diverged_epoch(history: Sequence[dict[str, Any]]) -> int | None:
    """The epoch whose mean training loss was NaN or infinite (training stops there), or None."""
    for row in history:
        loss = row.get("train_loss")
        if loss is not None and not math.isfinite(loss):
            return row["epoch"]
    return None


def summarize(history: list[dict[str, Any]]) -> dict[str, Any]:
    """Final and best-on-validation figures of a history (test never selects anything).

    A run that diverged has ``diverged_epoch``, no final figures (its last model is not a number) and its
    best-validation figures from the epochs before it."""
    diverged = diverged_epoch(history)
    out: dict[str, Any] = {"epochs_run": len(history)}
    good = history if diverged is None else [r for r in history if r["epoch"] < diverged]
    if diverged is None:
        last = history[-1]
        out.update(
            final_test_acc=last.get("test_acc"),
            final_val_acc=last.get("val_acc"),
            final_train_loss=last.get("train_loss"),
        )
    else:
        out.update(diverged_epoch=diverged, final_test_acc=None, final_val_acc=None, final_train_loss=None)
    val = [r["val_acc"] for r in good if r.get("val_acc") is not None]
    if val and len(val) == len(good):
        best = best_epoch(val)
        out.update(
            best_epoch=best,
            best_val_acc=val[best - 1],
            test_acc_at_best_val=good[best - 1]["test_acc"],
            convergence_epoch=convergence_epoch(val) if diverged is None else None,
        )
    return out


# The reproduce gate: a rerun of the report's experiment matches the report's table when, at every epoch, its
# validation accuracy is within GATE_VAL_ACC percentage points and its mean training loss within
# GATE_TRAIN_LOSS of the table's (``mnistlab reproduce`` and tests/test_gates.py).
GATE_VAL_ACC = 0.1
GATE_TRAIN_LOSS = 1e-3


def report_table(name: str = "report.csv") -> list[dict[str, float]]:
    """The report's per-epoch table (or the rerun of its script), from the package's reference data."""
    text = resources.files("mnistlab").joinpath("reference", name).read_text()
    return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(text.splitlines())]


def compare_with_report(history: list[dict[str, Any]], reference: list[dict[str, float]]) -> dict[str, float]:
    """Largest per-epoch gaps to the report's validation accuracy and training loss."""
    n = min(len(history), len(reference))
    return {
        "epochs_compared": n,
        "max_val_acc_diff": max(abs(history[i]["val_acc"] - reference[i]["val_acc"]) for i in range(n)),
        "max_train_loss_diff": max(abs(history[i]["train_loss"] - reference[i]["train_loss"]) for i in range(n)),
    }


def matches_report(gap: dict[str, float]) -> bool:
    """Whether a :func:`compare_with_report` gap passes the reproduce gate (:data:`GATE_VAL_ACC`,
    :data:`GATE_TRAIN_LOSS`)."""
    return gap["max_val_acc_diff"] <= GATE_VAL_ACC and gap["max_train_loss_diff"] <= GATE_TRAIN_LOSS
