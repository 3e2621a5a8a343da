"""Small text helpers shared by the CLI's messages and the Markdown that reports and studies write."""

from __future__ import annotations

from typing import Any


def plural(n: int, word: str) -> str:
    """``n`` and ``word``, in the plural unless ``n`` is 1: "1 epoch", "3 epochs"."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def md_cell(value: Any) -> str:
    """A value as one Markdown table cell: ``|`` escaped and line breaks made spaces, so that text from
    configs (labels, names) cannot break a table's rows."""
    return " ".join(str(value).split()).replace("|", "\\|")


def mean_epoch(value: float) -> str:
    """A mean over seeds of an epoch number: "2" when whole, else one decimal ("2.5")."""
    return f"{value:.1f}".removesuffix(".0")
