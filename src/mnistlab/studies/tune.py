"""Hyperparameter search: an Optuna study over config keys, ranked by validation accuracy only.

Optuna owns the search (a seeded TPE or random sampler, a median or successive-halving pruner fed every
epoch's validation accuracy) and the study's storage: by default SQLite inside the study directory, or
any database URL (``postgresql://...``) that several drivers on several machines share, Optuna's own
distributed mode. Trials run in this process or, with ``--ray``, as Ray tasks; a Ray worker reports its
epochs through Optuna's gRPC storage proxy served by the driver, so pruning works across nodes.

The budget is exact across drivers: trial numbers are handed out by the storage, and a driver that draws
a number beyond the budget marks that trial failed ("over budget") without running it and stops.

A search continues its sequence. Trial ``k`` samples with a generator seeded from ``(--seed, k)``
(:func:`trial_seed`), so a resumed or extended study never redraws an earlier trial's parameters, and a
sequential study is the same whatever the command history that built it: ``--trials 3`` then ``--trials 6``
gives the six trials of a fresh ``--trials 6``. (TPE also reads the finished trials' values, which are the
same numbers when training is reproducible; with parallel trials, which trials have finished when one is
sampled depends on timing.) A trial cut off by Ctrl-C or a kill keeps its number and parameters: the next
run of the command continues it, from its last finished epoch when it ran in this process (its checkpoint
is in its run directory), from the start when it ran on a Ray worker.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import checkpoint, checks, config, data, datasets
from ..core.experiment import StopRun, format_row, outcome_of, resume, run
from ..core.metrics import summarize
from ..core.observers import EpochObserver, OnEpoch, RunStart
from ..core.runs import (
    LOCK_FILE,
    RUN_FILES,
    STUDY_FILE,
    TUNE_RECORD,
    RunDir,
    atomic_write,
    check_study_dir,
    study_tracking,
)
from ..errors import ConfigError, MnistlabError
from ..text import plural
from .space import Param, space_to_dict

Log = Callable[[str], None]
DEFAULT_STORAGE = "study.db"  # in the study directory; recorded relative, so a moved study resumes
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "none")
FEW_TRIALS = 20  # importances from fewer complete trials than this get a caveat on the figure


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed of trial ``number`` in a search seeded with ``seed``: NumPy's SeedSequence of the
    pair, so trials draw independent streams and trial k's stream does not depend on what ran before."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


@dataclass(frozen=True)
class SearchOptions:
    """How the search samples and prunes; recorded in the study directory."""

    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 0
    pruner_startup: int = 5  # median: trials that finish before any pruning
    pruner_warmup: int = 1  # median: epochs of a trial before it can be pruned

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler {self.sampler!r} is unknown (choose from {', '.join(SAMPLERS)})")
        if self.pruner not in PRUNERS:
            raise ConfigError(f"--pruner {self.pruner!r} is unknown (choose from {', '.join(PRUNERS)})")
        if self.pruner_startup < 0 or self.pruner_warmup < 0:
            raise ConfigError("--pruner-startup and --pruner-warmup must be >= 0")
        if not 0 <= self.seed <= config.MAX_SEED:
            raise ConfigError(f"--seed must be in [0, {config.MAX_SEED}], got {self.seed}")

    def sampler_for(self, number: int) -> Any:
        """The sampler that draws trial ``number``'s parameters (seeded by :func:`trial_seed`)."""
        import optuna

        seed = trial_seed(self.seed, number)
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)  # liar: parallel trials differ

    def make_sampler(self) -> Any:
        return _trial_seeded_sampler(self)

    def make_pruner(self) -> Any:
        import optuna

        if self.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.pruner_startup, n_warmup_steps=self.pruner_warmup)
        if self.pruner == "halving":
            return optuna.pruners.SuccessiveHalvingPruner()
        return optuna.pruners.NopPruner()


def _trial_seeded_sampler(options: SearchOptions) -> Any:
    """An Optuna sampler that hands each trial to ``options.sampler_for(trial.number)``. TPE and random
    sampling keep no state between trials but their random generator (TPE reads the study's trials), so
    a fresh, per-trial seeded sampler draws what a sampler restored to that point would, without storing
    or unpickling any sampler state."""
    import optuna

    class TrialSeededSampler(optuna.samplers.BaseSampler):
        def __init__(self) -> None:
            self._by_number: dict[int, Any] = {}

        def _for(self, trial: Any) -> Any:
            if trial.number not in self._by_number:
                if len(self._by_number) > 64:  # finished trials' samplers are not needed again
                    self._by_number.pop(min(self._by_number))
                self._by_number[trial.number] = options.sampler_for(trial.number)
            return self._by_number[trial.number]

        def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
            return self._for(trial).infer_relative_search_space(study, trial)

        def sample_relative(self, study: Any, trial: Any, search_space: dict[str, Any]) -> dict[str, Any]:
            return self._for(trial).sample_relative(study, trial, search_space)

        def sample_independent(self, study: Any, trial: Any, param_name: str, param_distribution: Any) -> Any:
            return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study: Any, trial: Any) -> None:
            self._for(trial).before_trial(study, trial)

        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            self._for(trial).after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            pass  # every trial's seed is fixed by its number

    return TrialSeededSampler()


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise MnistlabError("mnistlab tune needs Optuna: pip install 'mnistlab[scale]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # mnistlab prints its own line per trial
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _redact(url: str) -> str:
    """A storage URL without its password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split(":", 1)[0] + ":..."


def check_storage_url(url: str | None) -> None:
    """Refuse a storage that would not outlive the command (SQLite in memory): a rerun could not resume it."""
    if url is None:
        return
    from sqlalchemy.engine import make_url

    try:
        u = make_url(url)
    except Exception:
        return
    if u.get_backend_name() == "sqlite" and (
        u.database in (None, "", ":memory:") or "memory" in str(u.query.get("mode", ""))
    ):
        raise MnistlabError(
            f"--storage {url} keeps the study in memory, so it would be lost when the command "
            f"ends; use sqlite:///PATH, a database server, or no --storage (SQLite in --out)"
        )


def open_storage(url: str | None, out: Path) -> tuple[Any, str]:
    """The study's storage (default: SQLite in ``out``) and its URL as shown to users."""
    optuna = _optuna()
    check_storage_url(url)
    url = url or f"sqlite:///{(out / DEFAULT_STORAGE).resolve()}"
    try:
        storage = _rdb_storage(optuna, url)
    except ImportError as e:
        missing = getattr(e.__cause__, "name", None) or "its database driver"
        raise MnistlabError(
            f"cannot open study storage {_redact(url)}: {missing} is not installed "
            f"(for PostgreSQL: pip install 'mnistlab[scale]')"
        ) from None
    except Exception as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MnistlabError(f"cannot open study storage {_redact(url)}: {reason}") from None
    return storage, _redact(url)


def _rdb_storage(optuna: Any, url: str, tries: int = 5) -> Any:
    """RDBStorage, retried when another driver is creating the same tables at this moment (their first
    start on an empty database: one of the two gets a duplicate-key error and finds the tables next time)."""
    import sqlalchemy.exc

    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=None if url.startswith("sqlite") else {"pool_pre_ping": True}
            )
        except sqlalchemy.exc.IntegrityError:
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- one trial


class PruningHook:
    """A trial's :class:`~mnistlab.core.observers.EpochObserver`: report each epoch's validation accuracy,
    stop the run (:class:`StopRun`) when the pruner says so.

    In this process it wraps the live trial. On a Ray worker it is built from a picklable description and
    reaches the study through Optuna's gRPC storage proxy on the driver. Epochs up to ``reported_through``
    were reported by an earlier attempt of the trial and are not reported again.
    """

    name = "pruning"

    def __init__(
        self,
        trial: Any = None,
        *,
        proxy: tuple[str, int] | None = None,
        study_name: str = "",
        trial_number: int = -1,
        options: SearchOptions | None = None,
        reported_through: int = 0,
    ) -> None:
        self.trial, self.proxy, self.study_name = trial, proxy, study_name
        self.trial_number, self.options, self.reported_through = trial_number, options, reported_through

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "trial": None}  # the live trial stays on the driver

    def _remote_trial(self) -> Any:
        assert self.proxy is not None and self.options is not None  # a hook made for a Ray worker has both
        optuna = _optuna()
        storage = optuna.storages.GrpcStorageProxy(host=self.proxy[0], port=self.proxy[1])
        study = optuna.load_study(
            study_name=self.study_name,
            storage=storage,
            pruner=self.options.make_pruner(),
            sampler=self.options.make_sampler(),
        )
        return optuna.trial.Trial(study, _trial_id(storage, self.study_name, self.trial_number))

    def start(self, run: RunStart) -> None:
        return None  # nothing to record: the trial's identity is its number in the study

    def end(self, run_dir: Path, status: str) -> None:
        return None  # the driver tells the study how the trial ended (_finish)

    def epoch(self, row: dict[str, Any]) -> None:
        if self.trial is None:
            self.trial = self._remote_trial()
        if row.get("val_acc") is None:
            return
        if row["epoch"] > self.reported_through:
            self.trial.report(row["val_acc"], row["epoch"])
        if self.trial.should_prune():
            raise StopRun(f"pruned at epoch {row['epoch']}")


def _trial_id(storage: Any, study_name: str, number: int) -> int:
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


def trial_config(base: config.Config, params: list[Param], stored: dict[str, Any], number: int) -> config.Config:
    """The base config with a trial's parameters set; named after the trial."""
    values = {p.key: p.decode(stored[p.key]) for p in params if p.key in stored}
    return checks.set_values(base, {**values, "name": f"{base.name}-trial{number:04d}"})


def _described(params: list[Param], stored: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    return ", ".join(f"{p.key}={show(stored[p.key])}" for p in params if p.key in stored)


@dataclass
class TrialResult:
    outcome: str  # complete | stopped (pruned) | diverged | rejected
    seconds: float
    node: dict[str, Any]
    reason: str = ""


def _run_here(
    cfg: config.Config,
    path: Path,
    dataset: data.Dataset,
    observers: list[EpochObserver],
    log: Log,
    show_progress: bool = False,
    continue_run: bool = False,
) -> TrialResult:
    """Train a trial in this process (``continue_run``: resume its run directory), followed by ``observers``
    (trackers, the pruning hook); a config refused when the run is set up (e.g. a batch larger than the
    training set) is the outcome "rejected", not an error."""
    start = time.perf_counter()

    def train() -> None:
        if continue_run:
            resume(path, log=log, show_progress=show_progress, dataset=dataset, observers=observers)
        else:
            run(
                cfg,
                path,
                overwrite=path.exists(),
                log=log,
                show_progress=show_progress,
                dataset=dataset,
                observers=observers,
            )

    outcome, reason = outcome_of(train)
    device = RunDir(path).read_info()["environment"]["device"] if RunDir(path).file("run.json").is_file() else None
    return TrialResult(
        outcome, time.perf_counter() - start, {"hostname": socket.gethostname(), "device": device}, reason
    )


def _finish(study: Any, trial: Any, path: Path, result: TrialResult, log: Log) -> None:
    """Tell the study how a trial ended: its best validation accuracy, or pruned (pruned by the pruner,
    diverged, or rejected by the config: each named in the trial's ``outcome`` and ``note``)."""
    optuna = _optuna()
    history = RunDir(path).read_history() if RunDir(path).is_run() else []
    s = summarize(history) if history else {}
    note = {
        "stopped": result.reason,
        "rejected": f"rejected: {result.reason}",
        "diverged": f"diverged at epoch {len(history)} (loss NaN or infinite)",
    }.get(result.outcome, "")
    for key, value in {
        "run_dir": str(path) if history else None,
        "node": result.node.get("hostname"),
        "device": result.node.get("device"),
        "epochs_run": len(history),
        "seconds": round(result.seconds, 1),
        "best_epoch": s.get("best_epoch"),
        "outcome": "rejected" if result.outcome == "rejected" else result.outcome,
        "note": note,
        "interrupted": False,
    }.items():
        trial.set_user_attr(key, value)
    where = f"{plural(len(history), 'epoch')}, {result.seconds:.0f} s on {result.node.get('hostname')}"
    if result.outcome == "complete":
        study.tell(trial, s["best_val_acc"])
        log(
            f"trial {trial.number}: best validation accuracy {s['best_val_acc']:.3f}% at epoch {s['best_epoch']} "
            f"({where})"
        )
    else:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        log(f"trial {trial.number}: {note} ({where})")


# ---------------------------------------------------------------- the budget


def _budget_trial(study: Any, trials: int, tag: str) -> Any | None:
    """Ask the study for the next trial within the budget of ``trials`` (None when it is spent)."""
    optuna = _optuna()
    S = optuna.trial.TrialState
    live = (S.COMPLETE, S.PRUNED, S.RUNNING, S.WAITING)
    existing = study.get_trials(deepcopy=False, states=live)
    if len(existing) >= trials and not any(t.state == S.WAITING for t in existing):
        return None
    trial = study.ask()
    earlier = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
    if len(earlier) >= trials:  # another driver took the last place first
        trial.set_user_attr("over_budget", True)
        study.tell(trial, state=S.FAIL)
        return None
    trial.set_user_attr("study_dir", tag)
    return trial


def _cut_off(study: Any, tag: str) -> list[Any]:
    """Trials this study directory left running when its driver stopped (Ctrl-C, a kill, a lost task)."""
    optuna = _optuna()
    return [
        t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if t.user_attrs.get("study_dir") == tag
    ]


# ---------------------------------------------------------------- the study


@dataclass
class TuneResult:
    study: Any
    out: Path
    best_toml: Path | None
    timed_out: bool = False  # --timeout stopped the search before its budget was spent
    spent: bool = True  # the budget of trials is spent


@dataclass
class _Search:
    """What one command's search works with."""

    study: Any
    storage: Any
    base: config.Config
    params: list[Param]
    trials: int
    trials_dir: Path
    dataset: data.Dataset
    tag: str
    options: SearchOptions
    log: Log
    tracker: Any
    show_progress: bool
    deadline: float | None
    timed_out: bool = False

    def next_trial(self) -> Any | None:
        """The next new trial, or None when the budget (or --timeout) says stop."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.timed_out = True
            return None
        return _budget_trial(self.study, self.trials, self.tag)

    def live_trial(self, number: int) -> Any:
        return _optuna().trial.Trial(self.study, _trial_id(self.storage, self.study.study_name, number))

    def path(self, number: int) -> Path:
        return self.trials_dir / f"trial{number:04d}"

    def trial_log(self, number: int) -> Log:
        return lambda msg: self.log(f"trial {number}: {msg}")

    def sample(self, trial: Any) -> config.Config | None:
        """The trial's config from the sampler's values; a combination the config rejects (e.g. nesterov
        without momentum) is recorded as a rejected trial (pruned) and gives None."""
        try:
            for p in self.params:
                p.suggest(trial)
            cfg = trial_config(self.base, self.params, trial.params, trial.number)  # labels decoded back to values
        except ConfigError as e:
            trial.set_user_attr("outcome", "rejected")
            trial.set_user_attr("note", f"rejected: {e}")
            self.study.tell(trial, state=_optuna().trial.TrialState.PRUNED)
            self.log(f"trial {trial.number}: rejected by the config ({e})")
            return None
        self.log(f"trial {trial.number}: {_described(self.params, trial.params)}")
        return cfg


def check_request(
    base: config.Config, trials: int, storage_url: str | None = None, timeout_minutes: float | None = None
) -> None:
    """Everything about a search request that can be checked before anything is written."""
    if trials < 1:
        raise ConfigError("--trials must be at least 1")
    if timeout_minutes is not None and not (timeout_minutes > 0 and math.isfinite(timeout_minutes)):
        raise ConfigError(f"--timeout must be a finite number of minutes > 0, got {timeout_minutes}")
    if base.data.train_on_val:
        raise ConfigError("a search ranks trials on validation accuracy: data.train_on_val must be false")
    check_storage_url(storage_url)


def _record(
    base: config.Config, params: list[Param], options: SearchOptions, storage_url: str | None, study_name: str
) -> dict[str, Any]:
    return json.loads(
        json.dumps(
            {
                "study_name": study_name,
                "storage": DEFAULT_STORAGE if storage_url is None else _redact(storage_url),
                "config": config.to_dict(base),
                "space": space_to_dict(params),
                "search": options.__dict__,
            }
        )
    )


def _same_storage(old: Any, new: str) -> bool:
    # studies made before the default storage was recorded relative hold its absolute SQLite URL
    return old == new or (
        new == DEFAULT_STORAGE
        and isinstance(old, str)
        and old.startswith("sqlite:///")
        and old.endswith("/" + DEFAULT_STORAGE)
    )


def _existing_tag(out: Path, record: dict[str, Any]) -> str | None:
    """The tag of the study ``out`` holds (None: a new study); refuse a directory that holds another study."""
    path = out / TUNE_RECORD
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise MnistlabError(f"{path} is corrupt; move it away or choose another --out") from None
        for k in record:
            if not (_same_storage(old.get(k), record[k]) if k == "storage" else old.get(k) == record[k]):
                raise MnistlabError(f"{out} holds another study (its {k} differs); choose another --out")
        return old["tag"]
    if out.is_dir() and not {p.name for p in out.iterdir()} <= {LOCK_FILE, DEFAULT_STORAGE, STUDY_FILE}:
        raise MnistlabError(f"{out} is not empty and holds no study; choose another --out")
    return None


def tune(
    base: config.Config,
    params: list[Param],
    trials: int,
    out: Path,
    options: SearchOptions,
    storage_url: str | None = None,
    study_name: str | None = None,
    ray_options: Any = None,
    log: Log = print,
    tracker: Any = None,
    timeout_minutes: float | None = None,
    show_progress: bool = False,
    epoch_lines: bool = False,
) -> TuneResult:
    """Run (or resume) the search until the study holds ``trials`` finished trials; write its outputs.

    ``timeout_minutes``: start no trial after that long (trials under way finish), as Optuna's
    ``optimize(timeout=...)``; rerunning the command goes on with the study. ``epoch_lines``: log each
    trial's epochs. Raises :class:`MnistlabError` (bad request, storage, another study in ``out``) before
    anything is written; on Ctrl-C the tables and ``best.toml`` of the finished trials are written first.
    """
    optuna = _optuna()
    check_request(base, trials, storage_url, timeout_minutes)
    check_study_dir(out, "tune")
    base = datasets.pin_dir(base)
    study_name = study_name or base.name
    record = _record(base, params, options, storage_url, study_name)
    tag = _existing_tag(out, record)
    storage, shown = open_storage(storage_url, out)
    try:
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            load_if_exists=True,
            direction="maximize",
            sampler=options.make_sampler(),
            pruner=options.make_pruner(),
        )
    except Exception as e:
        raise MnistlabError(
            f"cannot create or load study {study_name!r} in {shown}: {str(e).splitlines()[0]}"
        ) from None
    if tag is None:
        tag = uuid.uuid4().hex
        atomic_write(out / TUNE_RECORD, json.dumps({**record, "tag": tag}, indent=1) + "\n")
    with study_tracking(out, "tune", tracker):  # study.json: the kind and the trackers' identity
        dataset = datasets.load_for(base, log)
        trials_dir = out / "trials"
        trials_dir.mkdir(exist_ok=True)
        deadline = None if timeout_minutes is None else time.monotonic() + 60 * timeout_minutes
        search = _Search(
            study,
            storage,
            base,
            params,
            trials,
            trials_dir,
            dataset,
            tag,
            options,
            log,
            tracker,
            show_progress,
            deadline,
        )
        try:
            if ray_options is None:
                _search_here(search, epoch_lines)
            else:
                _search_on_ray(search, ray_options, epoch_lines)
        except BaseException:
            # the finished trials' tables and best.toml, whatever stopped the search (its error is the one to report)
            with contextlib.suppress(Exception):
                write_outputs(study, base, params, out)
            raise
        best = write_outputs(study, base, params, out)
    S = optuna.trial.TrialState
    spent = len(study.get_trials(deepcopy=False, states=(S.COMPLETE, S.PRUNED))) >= trials
    if search.timed_out and not spent:
        log(f"--timeout: {timeout_minutes:g} minutes are up; no new trial started (rerun the command to go on)")
    return TuneResult(study, out, best, search.timed_out and not spent, spent)


def _continue_here(s: _Search, frozen: Any, epoch_lines: bool) -> None:
    """Run a cut-off trial again under its own number: from its checkpoint when its run directory has one."""
    trial = s.live_trial(frozen.number)
    path = s.path(frozen.number)
    run_dir = RunDir(path)
    info = run_dir.read_info() if run_dir.file("run.json").is_file() else {}
    status = info.get("status")
    if status in ("complete", "stopped", "diverged"):  # its run ended before the study was told (a kill)
        s.log(f"trial {frozen.number}: its run had ended ({status}); recording it")
        node = {"hostname": socket.gethostname(), "device": info.get("environment", {}).get("device")}
        outcome = "stopped" if status == "stopped" else status
        _finish(
            s.study,
            s.live_trial(frozen.number),
            path,
            TrialResult(outcome, info.get("wall_seconds", 0.0), node, info.get("stop_reason", "")),
            s.log,
        )
        return
    resumable = status in ("interrupted", "running") and checkpoint.exists(run_dir)
    if resumable:
        history = run_dir.read_history()
        for row in history:  # epochs that finished after the last report (a kill in between)
            if row.get("val_acc") is not None and row["epoch"] not in frozen.intermediate_values:
                trial.report(row["val_acc"], row["epoch"])
        s.log(f"trial {frozen.number}: continuing after epoch {len(history)} ({_described(s.params, frozen.params)})")
    else:
        s.log(f"trial {frozen.number}: starting again, nothing to resume ({_described(s.params, frozen.params)})")
    trial.set_user_attr("interrupted", False)
    cfg = trial_config(s.base, s.params, frozen.params, frozen.number)
    result = _run_trial(s, trial, cfg, path, epoch_lines, resumable)
    _finish(s.study, trial, path, result, s.log)


def epoch_line(row: dict[str, Any]) -> str:
    """A trial's epoch as the search shows it: training and validation only (the test set ranks nothing)."""
    return format_row(row, test=False)


def _run_trial(
    s: _Search, trial: Any, cfg: config.Config, path: Path, epoch_lines: bool, resumable: bool
) -> TrialResult:
    log = s.trial_log(trial.number)
    lines = [OnEpoch(lambda row: log(epoch_line(row)))] if epoch_lines else []
    # the trackers, the trial's epoch lines, then pruning (a resumed run calls it for the epochs it trains now)
    observers = [*(s.tracker or ()), *lines, PruningHook(trial)]
    try:  # the run's own lines are the per-epoch table with test columns: not shown in a search
        return _run_here(cfg, path, s.dataset, observers, lambda msg: None, s.show_progress, resumable)
    except BaseException:
        trial.set_user_attr("interrupted", True)  # continued by the next run of the command
        raise


def _search_here(s: _Search, epoch_lines: bool) -> None:
    for frozen in _cut_off(s.study, s.tag):
        _continue_here(s, frozen, epoch_lines)
    while (trial := s.next_trial()) is not None:
        cfg = s.sample(trial)
        if cfg is None:
            continue
        path = s.path(trial.number)
        if any((path / f).exists() for f in RUN_FILES):
            trial.set_user_attr("note", "its run directory held another run")
            s.study.tell(trial, state=_optuna().trial.TrialState.FAIL)
            raise MnistlabError(
                f"{path} already holds a run, but the study's storage has no record of it (was "
                f"{DEFAULT_STORAGE} replaced?); choose another --out"
            )
        result = _run_trial(s, trial, cfg, path, epoch_lines, False)
        _finish(s.study, trial, path, result, s.log)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _serve_storage(storage: Any, host: str) -> tuple[str, int]:
    """Serve the study's storage to Ray workers with Optuna's gRPC proxy (a daemon thread of this driver)."""
    optuna = _optuna()
    port = _free_port(host)
    threading.Thread(
        target=optuna.storages.run_grpc_proxy_server,
        args=(storage,),
        kwargs={"host": host, "port": port},
        daemon=True,
        name="optuna-grpc-proxy",
    ).start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return host, port
        except OSError:
            time.sleep(0.1)
    raise MnistlabError(f"could not start Optuna's storage proxy on {host}:{port}")


def _search_on_ray(s: _Search, ray_options: Any, epoch_lines: bool) -> None:
    """The search with each trial as a Ray task of :func:`~mnistlab.studies.ray_executor.task_loop`, as many
    at once as the cluster holds; trials still running when the search stops stay RUNNING (interrupted),
    and the next run of the command starts them again."""
    from . import ray_executor

    def interrupted(task: ray_executor.RunTask) -> None:
        task.key.set_user_attr("interrupted", True)  # stays RUNNING: the next run starts it again

    with ray_executor.task_loop(
        ray_options, s.dataset, s.log, s.tracker, epoch_line if epoch_lines else None, on_cancel=interrupted
    ) as loop:
        proxy = _serve_storage(s.storage, loop.ray.util.get_node_ip_address())
        parallel = loop.slots()
        s.log(
            f"search on Ray: up to {parallel} trials at once, {ray_options.request()} each; storage proxy at "
            f"{proxy[0]}:{proxy[1]}"
        )
        again = _cut_off(s.study, s.tag)  # cut-off trials first, under their own numbers, from the start

        def submit(trial: Any, cfg: config.Config, reported_through: int) -> None:
            hook = PruningHook(
                proxy=proxy,
                study_name=s.study.study_name,
                trial_number=trial.number,
                options=s.options,
                reported_through=reported_through,
            )
            loop.submit(ray_executor.RunTask(cfg, s.path(trial.number), f"trial {trial.number}", trial, hook))

        spent = False
        while True:
            while len(loop.pending) < parallel:
                if again:
                    frozen = again.pop(0)
                    trial = s.live_trial(frozen.number)
                    trial.set_user_attr("interrupted", False)
                    s.log(f"trial {frozen.number}: starting again on Ray ({_described(s.params, frozen.params)})")
                    submit(
                        trial,
                        trial_config(s.base, s.params, frozen.params, frozen.number),
                        max(frozen.intermediate_values, default=0),
                    )
                    continue
                if spent or (trial := s.next_trial()) is None:
                    spent = True
                    break
                cfg = s.sample(trial)
                if cfg is not None:
                    submit(trial, cfg, 0)
            if not loop.pending:
                break
            done = loop.next()
            _finish(
                s.study,
                done.task.key,
                done.task.path,
                TrialResult(done.outcome, done.seconds, done.node, done.reason),
                s.log,
            )


# ---------------------------------------------------------------- outputs


TRIAL_COLUMNS = ("number", "state", "best_val_acc", "epochs_run", "best_epoch", "node", "seconds", "note")


def trial_records(study: Any, params: list[Param]) -> list[dict[str, Any]]:
    """One record per trial that ran or runs: parameters, best validation accuracy, epochs, state, node,
    and a note saying why a trial did not complete (pruned, diverged, rejected, interrupted)."""
    optuna = _optuna()
    S = optuna.trial.TrialState
    recs = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("over_budget"):  # never ran: another driver had the last place
            continue
        outcome = t.user_attrs.get("outcome", "")
        state = {S.COMPLETE: "complete", S.RUNNING: "running", S.WAITING: "waiting", S.FAIL: "failed"}.get(t.state)
        if t.state == S.PRUNED:
            state = (
                outcome
                if outcome in ("diverged", "rejected")
                else "rejected"
                if outcome.startswith("rejected")
                else "pruned"
            )
        note = t.user_attrs.get("note") or (outcome if outcome.startswith("rejected:") else "")
        if t.state == S.RUNNING and t.user_attrs.get("interrupted"):
            state, note = "interrupted", "cut off; the same command continues it"
        vals = list(t.intermediate_values.values())
        rec: dict[str, Any] = {
            "number": t.number,
            "state": state,
            "best_val_acc": round(t.value if t.value is not None else max(vals), 3)
            if (t.value is not None or vals)
            else None,
            "epochs_run": t.user_attrs.get("epochs_run", len(vals)),
            "best_epoch": t.user_attrs.get("best_epoch"),
            "node": t.user_attrs.get("node"),
            "seconds": t.user_attrs.get("seconds"),
            "note": note,
        }
        for p in params:
            rec[p.key] = t.params.get(p.key)
        recs.append(rec)
    return recs


def _table_md(recs: list[dict[str, Any]], params: list[Param]) -> str:
    cols = ["number", "state", *[p.key for p in params], "best_val_acc", "epochs_run", "node", "seconds", "note"]
    head = ["trial", "state", *[p.key for p in params], "best val acc %", "epochs", "node", "s", "note"]

    def cell(v: Any) -> str:
        if v is None or v == "":
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v).replace("|", "/")

    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in recs]
    return "\n".join(lines) + "\n"


def _png(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
    plt.close(fig)


def history_figure(recs: list[dict[str, Any]], study_name: str) -> Any:
    """Each trial's best validation accuracy by trial number (complete trials filled, pruned ones hollow at
    the best epoch they reached) and the best so far; one title, integer trial ticks."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 5))
    done = [(r["number"], r["best_val_acc"]) for r in recs if r["state"] == "complete"]
    cut = [(r["number"], r["best_val_acc"]) for r in recs if r["state"] == "pruned" and r["best_val_acc"] is not None]
    if done:
        ax.plot(*zip(*done, strict=True), "o", color="tab:blue", label="complete trial")
        best, so_far = -math.inf, []
        for n, v in sorted(done):
            best = max(best, v)
            so_far.append((n, best))
        last = max(r["number"] for r in recs)
        if last > so_far[-1][0]:
            so_far.append((last, best))  # the best holds through the trials after it
        ax.step(*zip(*so_far, strict=True), where="post", color="tab:red", label="best so far")
    if cut:
        ax.plot(*zip(*cut, strict=True), "o", mfc="none", color="tab:gray", label="pruned trial (best epoch reached)")
    ax.set_title(f"Validation accuracy of each trial (study {study_name})")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig


def importance_figure(importances: dict[str, float], complete: int) -> Any:
    """Parameter importances (PED-ANOVA) as bars, with the number of complete trials they come from and a
    caveat when that is few."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.5 * len(importances)))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (PED-ANOVA, share of the total)")
    ax.set_xlim(0, max(1.0, max(importances.values(), default=0)))
    caveat = f"from {complete} complete trials"
    if complete < FEW_TRIALS:
        caveat += ": few trials, a rough guide only"
    ax.set_title(f"Parameter importances for validation accuracy\n({caveat})")
    return fig


def write_outputs(study: Any, base: config.Config, params: list[Param], out: Path) -> Path | None:
    """trials.md/.csv/.json, best.toml (the best complete trial's config), history.png, importance.png."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    optuna = _optuna()
    recs = trial_records(study, params)
    cols = [*TRIAL_COLUMNS, *[p.key for p in params]]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if r.get(k) is None else r.get(k)) for k in cols} for r in recs)
    atomic_write(out / "trials.csv", buf.getvalue())
    atomic_write(out / "trials.md", _table_md(recs, params))
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    best_path = None
    summary: dict[str, Any] = {"study_name": study.study_name, "trials": recs, "best": None}
    if complete:
        best = max(complete, key=lambda t: (t.value, -t.number))
        cfg = trial_config(base, params, best.params, best.number)
        cfg = checks.set_values(
            cfg, {"name": f"{base.name}_tuned", "label": f"{base.label or base.name}, tuned (trial {best.number})"}
        )
        best_path = out / "best.toml"
        atomic_write(
            best_path,
            f"# the best trial of study {study.study_name!r} by validation accuracy "
            f"({best.value:.3f}%, trial {best.number})\n" + config.dumps(cfg),
        )
        summary["best"] = {
            "number": best.number,
            "best_val_acc": best.value,
            "params": {p.key: p.decode(best.params[p.key]) for p in params},
        }
        _png(history_figure(recs, study.study_name), out / "history.png")
        if len(complete) >= 2:
            try:
                with warnings.catch_warnings():  # few trials: PED-ANOVA warns that importances are equal
                    warnings.simplefilter("ignore")
                    imp = optuna.importance.get_param_importances(
                        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator()
                    )
                _png(importance_figure(imp, len(complete)), out / "importance.png")
            except (ValueError, RuntimeError, ZeroDivisionError):
                pass  # too few distinct trials to rank parameters
    atomic_write(out / "trials.json", json.dumps(summary, indent=1) + "\n")
    return best_path
