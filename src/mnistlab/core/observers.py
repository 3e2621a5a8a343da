"""What follows a run epoch by epoch: the one interface that trackers (TensorBoard, MLflow:
:mod:`mnistlab.output.tracking`) and a search's pruning hook (:class:`mnistlab.studies.tune.PruningHook`)
implement, and that :func:`mnistlab.core.experiment.run` calls, in the order given, for every observer of a run.

Add a tracker: a class with the methods of :class:`EpochObserver` (and :class:`StudyObserver`'s ``study`` when
it groups a study's runs), registered in :data:`mnistlab.output.tracking.TRACKERS`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class RunStart:
    """What an observer is told when a run starts or resumes."""

    name: str  # the config's name
    config: dict[str, Any]  # the resolved config, as nested dicts
    run_dir: Path
    previous: dict[str, Any] | None = None  # what this observer's start returned for this run before (a resume)
    history: Sequence[dict[str, Any]] = field(default_factory=tuple)  # the epochs finished before (a resume)


class EpochObserver(Protocol):
    """Follows one run: ``start`` before its first epoch (or on resume), ``epoch`` after each epoch's row is
    on disk (it may raise :class:`mnistlab.core.experiment.StopRun` to end the run on purpose), ``end`` once
    run.json holds the final status ("complete", "interrupted", "stopped", "diverged" or "failed")."""

    name: str  # the key of its identity in run.json's "tracking"

    def start(self, run: RunStart) -> dict[str, Any] | None:
        """Begin (or continue) following ``run``; returns the identity to record in run.json, so a resume
        continues it (None: nothing to record)."""
        ...

    def epoch(self, row: dict[str, Any]) -> None: ...

    def end(self, run_dir: Path, status: str) -> None: ...


class StudyContext(Protocol):
    """What groups a study's runs in a tracking store (an MLflow parent run): one tracker, or all of a
    command's (:class:`mnistlab.output.tracking.Trackers`)."""

    def study(self, name: str, previous: dict[str, Any] | None = None) -> AbstractContextManager[dict[str, Any]]:
        """The study's context; yields its identity (recorded in study.json to continue the study later)."""
        ...


class StudyObserver(EpochObserver, StudyContext, Protocol):
    """An observer that also groups a study's runs (an MLflow parent run)."""


def start_all(
    observers: Sequence[EpochObserver],
    name: str,
    config: dict[str, Any],
    run_dir: Path,
    recorded: dict[str, Any] | None,
    history: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """Start every observer on a run, each given its own identity from ``recorded`` (run.json's "tracking");
    returns the identities to record, by observer name (observers that return none are left out)."""
    identity = {}
    for o in observers:
        got = o.start(RunStart(name, config, Path(run_dir), (recorded or {}).get(o.name), history))
        if got:
            identity[o.name] = got
    return identity


class OnEpoch:
    """A function of each epoch's row as an :class:`EpochObserver` (nothing at start and end)."""

    name = "on_epoch"

    def __init__(self, fn: Callable[[dict[str, Any]], None]) -> None:
        self.fn = fn

    def start(self, run: RunStart) -> None:
        return None

    def epoch(self, row: dict[str, Any]) -> None:
        self.fn(row)

    def end(self, run_dir: Path, status: str) -> None:
        return None
