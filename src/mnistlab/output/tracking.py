"""Experiment tracking: runs followed in TensorBoard or MLflow (``--track tensorboard``, ``--track mlflow``).

A tracker sees a run start (its resolved config as parameters), each epoch's metrics, and its end (the
figures and best weights as artifacts). TensorBoard writes event files under the run directory
(``RUN_DIR/tensorboard/``, part of the run); MLflow writes to its default local store (``sqlite:///mlflow.db``)
unless ``MLFLOW_TRACKING_URI`` says otherwise, and groups a study's runs under one parent run. Neither
library is imported unless asked for. A study run on Ray is logged by the driver as each run's files come back.

Each tracker is an :class:`~mnistlab.core.observers.StudyObserver` (start, epoch, end, study); a run calls
the trackers a command asked for (:class:`Trackers`) with its other observers. A run's tracker identity lives
with the run: ``start`` returns it (the MLflow run id and store, the TensorBoard directory) and the run
records it in ``run.json``; resuming the run passes it back, so
MLflow continues the same run (FINISHED at the end, KILLED on Ctrl-C, FAILED on divergence) and TensorBoard
drops the events after the checkpoint (``purge_step``). A store that cannot be used is found when the
tracker is made, before any run directory exists, in one line and a few seconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from ..core.observers import RunStart, StudyObserver, start_all
from ..errors import MnistlabError

METRICS = ("train_loss", "val_loss", "val_acc", "test_loss", "test_acc", "lr")
ARTIFACTS = ("accuracy.png", "loss.png", "best.safetensors", "config.toml", "run.json")
TB_DIR = "tensorboard"
STORE_TIMEOUT_S = 5  # how long a tracking store may take to answer before the command gives up


def flat_params(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (``optim.lr``), lists as text."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v) if isinstance(v, list) else v
    return out


def mlflow_status(status: str) -> str:
    """MLflow's run status for a run.json status: complete -> FINISHED, interrupted or stopped (pruned) ->
    KILLED, diverged or failed -> FAILED."""
    return {"complete": "FINISHED", "interrupted": "KILLED", "stopped": "KILLED"}.get(status, "FAILED")


class TensorBoardTracker:
    """Scalars per epoch, the config as text, the figures as images, in ``RUN_DIR/tensorboard/``."""

    name = "tensorboard"

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MnistlabError("--track tensorboard needs TensorBoard: pip install 'mnistlab[track]'") from None
        self._writer_cls = SummaryWriter
        self.writer: Any = None

    @contextmanager
    def study(self, name: str, previous: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        yield {}  # a study's runs are found by pointing TensorBoard at the study directory

    def start(self, run: RunStart) -> dict[str, Any]:
        log_dir = str(run.run_dir / TB_DIR)
        if run.history:  # a resume: drop what was logged from the last finished epoch on, and log that epoch again
            self.writer = self._writer_cls(log_dir=log_dir, purge_step=run.history[-1]["epoch"])
            self.epoch(run.history[-1])
        else:
            self.writer = self._writer_cls(log_dir=log_dir)
            self.writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in flat_params(run.config).items()))
        return {"log_dir": TB_DIR}

    def epoch(self, row: dict[str, Any]) -> None:
        for key in METRICS:
            if row.get(key) is not None:
                self.writer.add_scalar(key, row[key], row["epoch"])
        self.writer.flush()

    def end(self, run_dir: Path, status: str) -> None:
        import numpy as np
        from PIL import Image

        for fig in ("accuracy.png", "loss.png"):
            path = Path(run_dir) / fig
            if path.is_file():
                img = np.asarray(Image.open(path).convert("RGB"))
                self.writer.add_image(fig.removesuffix(".png"), img, dataformats="HWC")
        self.writer.add_text("status", status)
        self.writer.close()


def _redact(uri: str) -> str:
    """A store URI without its password."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(uri).render_as_string(hide_password=True)
    except Exception:
        return uri


def store_uri(uri: str) -> str:
    """A tracking URI with a relative SQLite path made absolute, so a run names the store it used."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path, sep, query = uri.removeprefix("sqlite:///").partition("?")
        return f"sqlite:///{Path(path).resolve()}{sep}{query}"
    return uri


def check_store(uri: str, timeout: float = STORE_TIMEOUT_S) -> None:
    """Open the tracking store once, quickly: a database must accept a connection (and SQLite a write lock),
    a tracking server must answer. MLflow itself retries for minutes with a warning per try."""
    from urllib.parse import urlparse

    scheme = urlparse(uri).scheme
    shown = _redact(uri)
    try:
        if scheme == "sqlite":
            import sqlite3

            from sqlalchemy.engine import make_url

            path = make_url(uri).database
            if path in (None, "", ":memory:"):
                raise MnistlabError(
                    f"the MLflow tracking store {shown} is in memory: the runs would be lost; use sqlite:///PATH"
                )
            con = sqlite3.connect(path, timeout=timeout)
            try:
                con.execute("BEGIN IMMEDIATE")  # needs a writable database
                con.rollback()
            finally:
                con.close()
        elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
            import sqlalchemy

            kind = scheme.split("+")[0]
            args = {"connect_timeout": int(timeout)} if kind in ("postgresql", "mysql") else {}
            engine = sqlalchemy.create_engine(uri, connect_args=args, pool_pre_ping=False)
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
        elif scheme in ("http", "https"):
            import urllib.request

            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
                pass
    except MnistlabError:
        raise
    except ImportError as e:
        raise MnistlabError(f"cannot use the MLflow tracking store {shown}: {e.name or e} is not installed") from None
    except Exception as e:
        reason = str(getattr(e, "orig", None) or getattr(e, "reason", None) or e).strip().splitlines()
        raise MnistlabError(
            f"cannot use the MLflow tracking store {shown}: {reason[0] if reason else type(e).__name__}"
        ) from None


def _quiet_mlflow() -> None:
    """MLflow's INFO lines (creating tables, experiments) off unless MLFLOW_LOGGING_LEVEL asks for them."""
    if "MLFLOW_LOGGING_LEVEL" not in os.environ:
        os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"  # read when mlflow is imported
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # already imported
        logging.getLogger("alembic").setLevel(logging.WARNING)


class MlflowTracker:
    """Parameters, per-epoch metrics and artifacts in MLflow; a study is a parent run with one child per run."""

    name = "mlflow"

    def __init__(self) -> None:
        _quiet_mlflow()
        try:
            import mlflow
        except ImportError:
            raise MnistlabError("--track mlflow needs MLflow: pip install 'mnistlab[track]'") from None
        self.mlflow = mlflow
        self.uri = store_uri(mlflow.get_tracking_uri())
        check_store(self.uri)
        self._experiment()
        self.active: Any = None
        self.nested = False

    def _experiment(self) -> None:
        try:
            self.mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "mnistlab"))
        except Exception as e:
            raise MnistlabError(
                f"cannot use the MLflow tracking store {_redact(self.uri)}: {str(e).splitlines()[0]}"
            ) from None

    def _existing(self, previous: dict[str, Any] | None, what: str) -> str | None:
        """The MLflow run id to continue, checked against this store (None: start a new run)."""
        if not previous or not previous.get("run_id"):
            return None
        if previous.get("tracking_uri") != self.uri:
            raise MnistlabError(
                f"this {what} is tracked in the MLflow store {_redact(previous.get('tracking_uri', '?'))} "
                f"(run {previous['run_id']}), not {_redact(self.uri)}: set MLFLOW_TRACKING_URI to it "
                f"to continue there"
            )
        try:
            run = self.mlflow.MlflowClient().get_run(previous["run_id"])
        except Exception:
            return None
        return None if run.info.lifecycle_stage == "deleted" else previous["run_id"]

    @contextmanager
    def study(self, name: str, previous: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        run_id = self._existing(previous, "study")
        status = "FAILED"
        with_run = self.mlflow.start_run(run_id=run_id) if run_id else self.mlflow.start_run(run_name=name)
        try:
            self.mlflow.set_tag("mnistlab.kind", "study")
            self.nested = True
            yield {"run_id": with_run.info.run_id, "tracking_uri": self.uri}
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        finally:
            self.nested = False
            self.mlflow.end_run(status=status)

    def start(self, run: RunStart) -> dict[str, Any]:
        run_id = self._existing(run.previous, "run")
        if run_id:
            self.active = self.mlflow.start_run(run_id=run_id, nested=self.nested)
            client = self.mlflow.MlflowClient()
            logged = {m.step for m in client.get_metric_history(run_id, "train_loss")}
            for row in run.history:  # epochs finished but not logged (a kill between the two)
                if row["epoch"] not in logged:
                    self.epoch(row)
        else:
            self.active = self.mlflow.start_run(run_name=run.name, nested=self.nested)
            self.mlflow.log_params(flat_params(run.config))
            self.mlflow.set_tag("mnistlab.run_dir", str(run.run_dir.resolve()))
        return {"run_id": self.active.info.run_id, "tracking_uri": self.uri}

    def epoch(self, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics({k: float(row[k]) for k in METRICS if row.get(k) is not None}, step=row["epoch"])

    def end(self, run_dir: Path, status: str) -> None:
        for name in ARTIFACTS:
            path = Path(run_dir) / name
            if path.is_file():
                self.mlflow.log_artifact(str(path))
        self.mlflow.end_run(status=mlflow_status(status))
        self.active = None


# add a tracker: a StudyObserver (mnistlab.core.observers) registered here by its --track name
TRACKERS: dict[str, Callable[[], StudyObserver]] = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}


class Trackers:
    """The trackers a command asked for: iterating gives them, the observers to pass to a run (none: an
    empty list); ``study`` enters every tracker's study context.

    Making them checks that each can be used (its library installed, its store reachable), so a command
    fails before it creates any directory."""

    def __init__(self, names: list[str] | None) -> None:
        unknown = sorted(set(names or []) - TRACKERS.keys())
        if unknown:
            raise MnistlabError(f"--track {unknown[0]!r} is unknown (choose from {', '.join(TRACKERS)})")
        self.items = [TRACKERS[n]() for n in dict.fromkeys(names or [])]

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self) -> Iterator[StudyObserver]:
        return iter(self.items)

    @contextmanager
    def study(self, name: str, previous: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """A study's tracking context; yields its identity by tracker (record it to continue the study later)."""
        with ExitStack() as stack:
            identity = {t.name: stack.enter_context(t.study(name, (previous or {}).get(t.name))) for t in self.items}
            yield {k: v for k, v in identity.items() if v}

    def replay(self, name: str, run_dir: Path) -> None:
        """Log a finished run from its files (a run that trained on a Ray worker); its identity goes to run.json."""
        from ..core.runs import RunDir

        run = RunDir(run_dir)
        info = run.read_info()
        info["tracking"] = start_all(self.items, name, info["config"], run.path, info.get("tracking"))
        run.write_info(info)
        for row in run.read_history():
            for t in self.items:
                t.epoch(row)
        for t in self.items:
            t.end(run.path, info.get("status", "complete"))
