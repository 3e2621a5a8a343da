"""One run end to end: data -> run directory -> training -> history, figures and summary on disk."""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError, DivergenceError, MnistlabError
from ..output.plots import run_figures
from ..text import plural
from . import checkpoint, checks, data, datasets
from . import config as config_mod
from .config import Config
from .hardware import auto_precision, bf16_supported, resolve_device
from .metrics import summarize
from .models import count_parameters
from .observers import EpochObserver, start_all
from .runs import RunDir, environment, now, remove_stale_temp
from .train import Trainer

Log = Callable[[str], None]


class StopRun(Exception):
    """Raised by an observer's ``epoch`` to end a run on purpose (a search pruning a trial): the run keeps its
    history and is marked ``stopped``, with the exception's text as the reason."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, once its files are consistent on disk: says how many epochs were kept."""

    def __init__(self, run_dir: Path, epochs: int) -> None:
        super().__init__(str(run_dir))
        self.run_dir, self.epochs = run_dir, epochs


@dataclass
class RunResult:
    run_dir: RunDir
    history: list[dict[str, Any]]
    convergence: int | None
    info: dict[str, Any]


def format_row(row: dict[str, Any], test: bool = True) -> str:
    """One line of the per-epoch table; ``test=False`` leaves the test columns out (a search shows training
    and validation only: the test set ranks nothing)."""

    def num(key: str, fmt: str) -> str:
        v = row.get(key)
        return "-" if v is None else format(v, fmt)

    tested = f"  test_loss {num('test_loss', '.4f')}  test_acc {num('test_acc', '7.3f')}" if test else ""
    return (
        f"epoch {row['epoch']:3d}  train_loss {num('train_loss', '.6f')}  val_loss {num('val_loss', '.4f')}  "
        f"val_acc {num('val_acc', '7.3f')}{tested}  ({row.get('seconds', 0):.1f}s)"
    )


def make_trainer(cfg: Config, dataset: data.Dataset, device: torch.device) -> Trainer:
    if cfg.train.engine == "numpy":
        from .numpy_train import NumpyTrainer

        return NumpyTrainer(cfg, dataset, torch.device("cpu"))
    return Trainer(cfg, dataset, device)


def resolve_precision(cfg: Config, device: torch.device, log: Log = lambda *a: None) -> Config:
    """``cfg`` with ``train.precision`` as a run on ``device`` trains it: "auto" becomes what
    :func:`mnistlab.core.hardware.auto_precision` picks, and bf16 falls back to fp32 (with a message) where
    the device has no native bf16. A run's config records the result; run.json's ``precision_requested``
    keeps what was asked, which is what a study compares when it meets the run again."""
    if cfg.train.precision == "auto":  # resolved once, when a run starts
        precision, reason = auto_precision(device) if cfg.train.engine == "torch" else ("fp32", "NumPy engine")
        log(f"precision auto: {precision} ({reason})")
        cfg = checks.set_values(cfg, {"train.precision": precision})
    if cfg.train.precision == "bf16" and not bf16_supported(device):
        log(f"note: {device} has no bf16 support; falling back to fp32")
        cfg = checks.set_values(cfg, {"train.precision": "fp32"})
    return cfg


def prepare(cfg: Config, log: Log, dataset: data.Dataset | None = None) -> tuple[data.Dataset, torch.device, Config]:
    """Check the config, load the data (unless given) and resolve device and precision
    (:func:`resolve_precision`). ``data.dir`` comes back absolute, so the run's record finds its data from
    anywhere."""
    checks.check(cfg)
    cfg = datasets.pin_dir(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    cfg = resolve_precision(cfg, device, log)
    if dataset is None:
        dataset = datasets.load_for(cfg, log)
    elif dataset.name != cfg.data.dataset:
        raise ConfigError(f"config key 'data.dataset' = {cfg.data.dataset!r} but the data given is {dataset.name}")
    return dataset, device, cfg


def final_config(run_path: str | Path, data_dir: str | Path | None = None) -> tuple[Config, int]:
    """The final model of a finished run: its config retrained on train + validation
    (``data.train_on_val``) for its best-validation epoch count, without early stopping, named
    ``NAME_final``; ``data_dir``: where the run's data is now. Returns (the config, checked; that epoch
    count). A run without a best-validation epoch (unfinished, or trained on train + validation) is a
    :class:`MnistlabError`."""
    run = RunDir(run_path)
    if not run.file("config.toml").is_file() or not run.file("run.json").is_file():
        raise MnistlabError(f"{run.path} is not a run directory (needs config.toml and run.json)")
    cfg = run.read_config()
    best = run.read_info().get("summary", {}).get("best_epoch")
    if cfg.data.train_on_val or not best:
        raise MnistlabError(f"{run.path} has no best-validation epoch to take (a finished run with validation needed)")
    values: dict[str, Any] = {
        "data.train_on_val": True,
        "train.epochs": best,
        "train.patience": 0,
        "name": f"{cfg.name}_final",
    }
    if data_dir:
        values["data.dir"] = str(data_dir)
    return checks.set_values(cfg, values), best


def _keeps_torch_threads(fn: Callable[..., RunResult]) -> Callable[..., RunResult]:
    """A run sets torch's thread count for itself (``train.threads``); the caller's count comes back after,
    so a run that does not set it is not run with the count an earlier run in the process left."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> RunResult:
        threads = torch.get_num_threads()
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper


@_keeps_torch_threads
def run(
    cfg: Config,
    out: str | Path,
    overwrite: bool = False,
    log: Log = print,
    show_progress: bool = False,
    dataset: data.Dataset | None = None,
    observers: Sequence[EpochObserver] = (),
) -> RunResult:
    """Train ``cfg`` into the run directory ``out``; every epoch's row is on disk as soon as it exists.

    ``dataset`` skips loading ``cfg.data.dir`` (a study's workers get it from the driver); ``observers``
    (:class:`~mnistlab.core.observers.EpochObserver`: trackers, a search's pruning hook) follow the run, in
    their order; one may end it with :class:`StopRun`.
    """
    requested = cfg.train.precision  # "auto", or a bf16 that may fall back: the config records the result
    dataset, device, cfg = prepare(cfg, log, dataset)
    trainer = make_trainer(cfg, dataset, device)  # before creating the directory: config errors write nothing
    run_dir = RunDir.create(out, overwrite)
    info: dict[str, Any] = {
        "name": cfg.name,
        "status": "running",
        "started": now(),
        "config": config_mod.to_dict(cfg),
        "precision_requested": requested,
        "environment": environment(device, dataset.checksum, dataset.source, cfg.train.seed),
        "data_is_mnist": dataset.is_mnist,
        "parameters": count_parameters(trainer.model),
        "data": {"dataset": dataset.name, "classes": list(dataset.classes), "verified": dataset.verified},
        "data_sizes": {
            "train": len(trainer.train_idx),
            "val": 0 if trainer.val is None else len(trainer.val.y),
            "test": len(trainer.test.y),
        },
    }
    run_dir.write_config(cfg)
    return _execute(trainer, run_dir, info, dataset.checksum, log, show_progress, observers)


def outcome_of(train: Callable[[], object]) -> tuple[str, str]:
    """Call ``train`` (a :func:`run` or :func:`resume`) and say how it ended, as a study records it:
    ``("complete", "")``; ``("stopped", why)`` when an observer stopped it (:class:`StopRun`, e.g. a pruned
    trial); ``("diverged", why)``; ``("rejected", why)`` for a config refused when the run was set up (e.g.
    a batch larger than the training set). Any other error propagates."""
    try:
        train()
    except StopRun as e:
        return "stopped", str(e)
    except DivergenceError as e:
        return "diverged", str(e)
    except ConfigError as e:
        return "rejected", str(e)
    return "complete", ""


@_keeps_torch_threads
def resume(
    path: str | Path,
    log: Log = print,
    show_progress: bool = False,
    dataset: data.Dataset | None = None,
    observers: Sequence[EpochObserver] = (),
) -> RunResult:
    """Continue an interrupted run from its last checkpoint; ends with the metrics of an uninterrupted run.

    ``dataset`` and ``observers`` as in :func:`run`; observers see the finished epochs at ``start``
    (``RunStart.history``) and are called for the epochs trained now; a tracker continues the run it followed
    before (its identity is in run.json)."""
    run_dir = RunDir(path)
    if not run_dir.file("config.toml").is_file():
        raise MnistlabError(f"{run_dir.path} is not a run directory (no config.toml)")
    info = run_dir.read_info()
    cfg = run_dir.read_config()
    try:
        recorded = config_mod.from_dict(info["config"])
    except (KeyError, TypeError, ConfigError):
        raise MnistlabError(
            f"{run_dir.file('run.json')} holds no valid config; start the run again with --overwrite"
        ) from None
    if config_mod.to_dict(cfg) != config_mod.to_dict(recorded):
        raise MnistlabError(
            f"{run_dir.file('config.toml')} differs from the config the run started with "
            f"(run.json); restore it, or start the run again with --overwrite"
        )
    tensors, meta = checkpoint.load(run_dir)
    dataset, device, cfg = prepare(cfg, log, dataset)
    if dataset.checksum != meta["data_sha256"]:
        raise MnistlabError(
            f"the data differs from the run's (SHA-256 {dataset.checksum[:12]}... vs "
            f"{meta['data_sha256'][:12]}...): resume with the same --data-dir"
        )
    trainer = make_trainer(cfg, dataset, device)
    trainer.load_state(tensors, meta)
    if trainer.done:
        raise MnistlabError(f"{run_dir.path} is already complete ({plural(trainer.epoch, 'epoch')})")
    log(f"resuming {run_dir.path} after epoch {trainer.epoch}")
    info.setdefault("resumed", []).append(
        {
            "at": now(),
            "after_epoch": trainer.epoch,
            "environment": environment(device, dataset.checksum, dataset.source, cfg.train.seed),
        }
    )
    return _execute(trainer, run_dir, info, dataset.checksum, log, show_progress, observers)


def _epochs_on_disk(run_dir: RunDir) -> int:
    """How many epochs metrics.csv holds: the truth about a run, whatever failed after it was written."""
    try:
        return len(run_dir.read_history(allow_empty=True)) if run_dir.is_run() else 0
    except MnistlabError:
        return 0


def _execute(
    trainer: Trainer,
    run_dir: RunDir,
    info: dict[str, Any],
    data_sha256: str,
    log: Log,
    show_progress: bool,
    observers: Sequence[EpochObserver] = (),
) -> RunResult:
    cfg = trainer.cfg
    remove_stale_temp(run_dir.path)
    info.update(status="running")
    # a tracker's run identity lives in run.json, so a resume (even after kill -9) continues it
    identity = start_all(observers, cfg.name, info["config"], run_dir.path, info.get("tracking"), trainer.history)
    if identity:
        info["tracking"] = identity
    run_dir.write_info(info)
    log(
        f"run {cfg.name}: {info['parameters']:,} parameters, {trainer.steps_per_epoch} steps/epoch, "
        f"device {trainer.device}, {cfg.train.precision}, {torch.get_num_threads()} threads -> {run_dir.path}"
    )

    def on_epoch(tr: Trainer, row: dict[str, Any], improved: bool) -> None:
        if math.isfinite(row["train_loss"]):  # a diverged epoch is recorded but never checkpointed
            if improved or tr.val is None:
                checkpoint.save_weights(run_dir, tr.weights, tr.epoch)
            checkpoint.save(run_dir, *tr.state(), data_sha256)
        run_dir.write_history(tr.history)
        log(format_row(row))
        for o in observers:
            o.epoch(row)

    start = time.perf_counter()
    finished = False
    try:
        trainer.fit(on_epoch, show_progress=show_progress)
        info["status"] = "complete"
        finished = True
    except KeyboardInterrupt:
        info["status"] = "interrupted"
        raise RunInterrupted(run_dir.path, _epochs_on_disk(run_dir)) from None
    except StopRun as e:
        info.update(status="stopped", stop_reason=str(e))
        raise
    except DivergenceError as e:
        info.update(status="diverged", stop_reason=str(e))
        raise
    except Exception:
        info["status"] = "failed"
        raise
    finally:
        written = _epochs_on_disk(run_dir)  # what run.json may claim: a write can fail, Ctrl-C land anywhere
        history = trainer.history[:written]
        info.update(
            finished=now(),
            wall_seconds=round(info.get("wall_seconds", 0) + time.perf_counter() - start, 3),
            train_seconds=round(sum(r["seconds"] for r in history), 3),
            epochs_done=written,
        )
        try:
            if history:
                info["summary"] = summarize(history)
                run_figures(history, run_dir.path, cfg.name)
            run_dir.write_info(info)
            for o in observers:
                o.end(run_dir.path, info["status"])
        except MnistlabError:
            if finished:  # otherwise the error that stopped the run is the one to report
                raise
    conv = info["summary"].get("convergence_epoch")
    return RunResult(run_dir, trainer.history, conv, info)
