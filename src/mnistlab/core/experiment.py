"""One run end to end: data -> run directory -> training -> history, figures and summary on disk."""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from . import checkpoint, checks, data, datasets
from . import config as config_mod
from .config import Config
from ..errors import ConfigError, DivergenceError, MnistlabError
from .hardware import auto_precision, bf16_supported
from .metrics import summarize
from .models import count_parameters
from ..output.plots import run_figures
from .runs import RunDir, environment, now, remove_stale_temp
from ..text import plural
from .train import Trainer, resolve_device

if TYPE_CHECKING:
    from ..output.tracking import Trackers

Log = Callable[[str], None]


class StopRun(Exception):
    """Raised by an ``on_epoch`` hook to end a run on purpose (a search pruning a trial): the run keeps its
    history and is marked ``stopped``, with the exception's text as the reason."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, once its files are consistent on disk: says how many epochs were kept."""

    def __init__(self, run_dir: Path, epochs: int) -> None:
        super().__init__(str(run_dir))
        self.run_dir, self.epochs = run_dir, epochs


EpochHook = Callable[[dict[str, Any]], None]


@dataclass
class RunResult:
    run_dir: RunDir
    history: list[dict[str, Any]]
    convergence: int | None
    info: dict[str, Any]


def format_row(row: dict[str, Any]) -> str:
    """One line of the per-epoch table."""
    def num(key: str, fmt: str) -> str:
        v = row.get(key)
        return "-" if v is None else format(v, fmt)
    return (f"epoch {row['epoch']:3d}  train_loss {num('train_loss', '.6f')}  val_loss {num('val_loss', '.4f')}  "
            f"val_acc {num('val_acc', '7.3f')}  test_loss {num('test_loss', '.4f')}  test_acc {num('test_acc', '7.3f')}"
            f"  ({row.get('seconds', 0):.1f}s)")


def make_trainer(cfg: Config, dataset: data.Dataset, device: torch.device) -> Trainer:
    if cfg.train.engine == "numpy":
        from ..analysis.numpy_train import NumpyTrainer
        return NumpyTrainer(cfg, dataset, torch.device("cpu"))
    return Trainer(cfg, dataset, device)


def prepare(cfg: Config, log: Log, dataset: data.Dataset | None = None) -> tuple[data.Dataset, torch.device, Config]:
    """Check the config, load the data (unless given) and resolve device and precision: "auto" becomes what
    :func:`mnistlab.core.hardware.auto_precision` picks for the device, and bf16 falls back to fp32 with a message
    where the device has no native bf16. ``data.dir`` comes back absolute, so the run's record finds its data
    from anywhere."""
    checks.check(cfg)
    cfg = datasets.pin_dir(cfg)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    if cfg.train.precision == "auto":  # resolved once, here; the run's config records the choice
        precision, reason = auto_precision(device) if cfg.train.engine == "torch" else ("fp32", "NumPy engine")
        log(f"precision auto: {precision} ({reason})")
        cfg = config_mod.set_values(cfg, {"train.precision": precision})
    if cfg.train.precision == "bf16" and not bf16_supported(device):
        log(f"note: {device} has no bf16 support; falling back to fp32")
        cfg = config_mod.set_values(cfg, {"train.precision": "fp32"})
    if dataset is None:
        dataset = datasets.load_config(cfg, log)
    elif dataset.name != cfg.data.dataset:
        raise ConfigError(f"config key 'data.dataset' = {cfg.data.dataset!r} but the data given is {dataset.name}")
    return dataset, device, cfg


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
def run(cfg: Config, out: str | Path, overwrite: bool = False, log: Log = print, show_progress: bool = False,
        dataset: data.Dataset | None = None, on_epoch: EpochHook | None = None,
        tracker: Trackers | None = None) -> RunResult:
    """Train ``cfg`` into the run directory ``out``; every epoch's row is on disk as soon as it exists.

    ``dataset`` skips loading ``cfg.data.dir`` (a study's workers get it from the driver); ``on_epoch(row)``
    runs after each epoch's row is written and may raise :class:`StopRun`; ``tracker`` follows the run in
    TensorBoard or MLflow.
    """
    dataset, device, cfg = prepare(cfg, log, dataset)
    trainer = make_trainer(cfg, dataset, device)  # before creating the directory: config errors write nothing
    run_dir = RunDir.create(out, overwrite)
    info: dict[str, Any] = {
        "name": cfg.name, "status": "running", "started": now(), "config": config_mod.to_dict(cfg),
        "environment": environment(device, dataset.checksum, dataset.source, cfg.train.seed),
        "data_is_mnist": dataset.is_mnist, "parameters": count_parameters(trainer.model),
        "data": {"dataset": dataset.name, "classes": list(dataset.classes), "verified": dataset.verified},
        "data_sizes": {"train": len(trainer.train_idx), "val": 0 if trainer.val is None else len(trainer.val.y),
                       "test": len(trainer.test.y)},
    }
    run_dir.write_config(cfg)
    return _execute(trainer, run_dir, info, dataset.checksum, log, show_progress, on_epoch, tracker)


@_keeps_torch_threads
def resume(path: str | Path, log: Log = print, show_progress: bool = False,
           tracker: Trackers | None = None, dataset: data.Dataset | None = None,
           on_epoch: EpochHook | None = None) -> RunResult:
    """Continue an interrupted run from its last checkpoint; ends with the metrics of an uninterrupted run.

    ``dataset`` and ``on_epoch`` as in :func:`run`; ``on_epoch`` sees only the epochs trained now. A tracker
    continues the run it followed before (its identity is in run.json)."""
    run_dir = RunDir(path)
    if not run_dir.file("config.toml").is_file():
        raise MnistlabError(f"{run_dir.path} is not a run directory (no config.toml)")
    info = run_dir.read_info()
    cfg = run_dir.read_config()
    try:
        recorded = config_mod.from_dict(info["config"])
    except (KeyError, TypeError, ConfigError):
        raise MnistlabError(f"{run_dir.file('run.json')} holds no valid config; start the run again with --overwrite") \
            from None
    if config_mod.to_dict(cfg) != config_mod.to_dict(recorded):
        raise MnistlabError(f"{run_dir.file('config.toml')} differs from the config the run started with "
                            f"(run.json); restore it, or start the run again with --overwrite")
    tensors, meta = checkpoint.load(run_dir)
    dataset, device, cfg = prepare(cfg, log, dataset)
    if dataset.checksum != meta["data_sha256"]:
        raise MnistlabError(f"the data differs from the run's (SHA-256 {dataset.checksum[:12]}... vs "
                            f"{meta['data_sha256'][:12]}...): resume with the same --data-dir")
    trainer = make_trainer(cfg, dataset, device)
    trainer.load_state(tensors, meta)
    if trainer.done:
        raise MnistlabError(f"{run_dir.path} is already complete ({plural(trainer.epoch, 'epoch')})")
    log(f"resuming {run_dir.path} after epoch {trainer.epoch}")
    info.setdefault("resumed", []).append({"at": now(), "after_epoch": trainer.epoch,
                                           "environment": environment(device, dataset.checksum, dataset.source,
                                                                      cfg.train.seed)})
    return _execute(trainer, run_dir, info, dataset.checksum, log, show_progress, on_epoch, tracker)


def _epochs_on_disk(run_dir: RunDir) -> int:
    """How many epochs metrics.csv holds: the truth about a run, whatever failed after it was written."""
    try:
        return len(run_dir.read_history(allow_empty=True)) if run_dir.is_run() else 0
    except MnistlabError:
        return 0


def _execute(trainer: Trainer, run_dir: RunDir, info: dict[str, Any], data_sha256: str, log: Log,
             show_progress: bool, hook: EpochHook | None = None, tracker: Trackers | None = None) -> RunResult:
    cfg = trainer.cfg
    remove_stale_temp(run_dir.path)
    info.update(status="running")
    if tracker:  # the tracker's run identity lives in run.json, so a resume (even after kill -9) continues it
        info["tracking"] = tracker.start(cfg.name, info["config"], run_dir.path, info.get("tracking"),
                                         trainer.history)
    run_dir.write_info(info)
    log(f"run {cfg.name}: {info['parameters']:,} parameters, {trainer.steps_per_epoch} steps/epoch, "
        f"device {trainer.device}, {cfg.train.precision}, {torch.get_num_threads()} threads -> {run_dir.path}")

    def on_epoch(tr: Trainer, row: dict[str, Any], improved: bool) -> None:
        if math.isfinite(row["train_loss"]):  # a diverged epoch is recorded but never checkpointed
            if improved or tr.val is None:
                checkpoint.save_weights(run_dir, tr.weights, tr.epoch)
            checkpoint.save(run_dir, *tr.state(), data_sha256)
        run_dir.write_history(tr.history)
        log(format_row(row))
        if tracker:
            tracker.epoch(row)
        if hook is not None:
            hook(row)

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
        info.update(finished=now(), wall_seconds=round(info.get("wall_seconds", 0) + time.perf_counter() - start, 3),
                    train_seconds=round(sum(r["seconds"] for r in history), 3), epochs_done=written)
        try:
            if history:
                info["summary"] = summarize(history)
                run_figures(history, run_dir.path, cfg.name)
            run_dir.write_info(info)
            if tracker:
                tracker.end(run_dir.path, info["status"])
        except MnistlabError:
            if finished:  # otherwise the error that stopped the run is the one to report
                raise
    conv = info["summary"].get("convergence_epoch")
    return RunResult(run_dir, trainer.history, conv, info)
