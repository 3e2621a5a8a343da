"""Experiment tracking: runs followed in TensorBoard or MLflow (``--track tensorboard``, ``--track mlflow``).

A tracker sees a run start (its resolved config as parameters), each epoch's metrics, and its end (the
figures and best weights as artifacts). TensorBoard writes event files under the run directory
(``RUN_DIR/tensorboard/``); MLflow writes to its default local store (``sqlite:///mlflow.db``) unless
``MLFLOW_TRACKING_URI`` says otherwise, and groups a study's runs under one parent run. Neither library is
imported unless asked for. A study run on Ray is logged by the driver as each run's files come back.
"""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import MnistlabError

METRICS = ("train_loss", "val_loss", "val_acc", "test_loss", "test_acc", "lr")
ARTIFACTS = ("accuracy.png", "loss.png", "best.safetensors", "config.toml", "run.json")


def flat_params(cfg: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (``optim.lr``), lists as text."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update(flat_params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v) if isinstance(v, list) else v
    return out


class TensorBoardTracker:
    """Scalars per epoch, the config as text, the figures as images, in ``RUN_DIR/tensorboard/``."""

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MnistlabError("--track tensorboard needs TensorBoard: pip install 'mnistlab[track]'") from None
        self._writer_cls = SummaryWriter
        self.writer: Any = None

    @contextmanager
    def study(self, name: str) -> Iterator[None]:
        yield  # a study's runs are found by pointing TensorBoard at the study directory

    def start(self, name: str, cfg: dict[str, Any], run_dir: Path) -> None:
        self.writer = self._writer_cls(log_dir=str(Path(run_dir) / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k} = {v}" for k, v in flat_params(cfg).items()))

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


class MlflowTracker:
    """Parameters, per-epoch metrics and artifacts in MLflow; a study is a parent run with one child per run."""

    def __init__(self) -> None:
        try:
            import mlflow
        except ImportError:
            raise MnistlabError("--track mlflow needs MLflow: pip install 'mnistlab[track]'") from None
        self.mlflow = mlflow
        self.active: Any = None
        self.nested = False

    def _experiment(self) -> None:
        try:
            self.mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "mnistlab"))
        except Exception as e:  # noqa: BLE001 - an unreachable or unwritable tracking store
            raise MnistlabError(f"cannot use the MLflow tracking store {self.mlflow.get_tracking_uri()}: "
                                f"{str(e).splitlines()[0]}") from None

    @contextmanager
    def study(self, name: str) -> Iterator[None]:
        self._experiment()
        with self.mlflow.start_run(run_name=name):
            self.mlflow.set_tag("mnistlab.kind", "study")
            self.nested = True
            try:
                yield
            finally:
                self.nested = False

    def start(self, name: str, cfg: dict[str, Any], run_dir: Path) -> None:
        if not self.nested:
            self._experiment()
        self.active = self.mlflow.start_run(run_name=name, nested=self.nested)
        self.mlflow.log_params(flat_params(cfg))
        self.mlflow.set_tag("mnistlab.run_dir", str(Path(run_dir).resolve()))

    def epoch(self, row: dict[str, Any]) -> None:
        self.mlflow.log_metrics({k: float(row[k]) for k in METRICS if row.get(k) is not None}, step=row["epoch"])

    def end(self, run_dir: Path, status: str) -> None:
        for name in ARTIFACTS:
            path = Path(run_dir) / name
            if path.is_file():
                self.mlflow.log_artifact(str(path))
        self.mlflow.end_run(status="FINISHED" if status == "complete" else "KILLED" if status in (
            "interrupted", "stopped") else "FAILED")
        self.active = None


TRACKERS = {"tensorboard": TensorBoardTracker, "mlflow": MlflowTracker}


class Trackers:
    """The trackers a command asked for, called together (none: every call does nothing)."""

    def __init__(self, names: list[str] | None) -> None:
        unknown = sorted(set(names or []) - TRACKERS.keys())
        if unknown:
            raise MnistlabError(f"--track {unknown[0]!r} is unknown (choose from {', '.join(TRACKERS)})")
        self.items = [TRACKERS[n]() for n in dict.fromkeys(names or [])]

    def __bool__(self) -> bool:
        return bool(self.items)

    @contextmanager
    def study(self, name: str) -> Iterator[None]:
        with ExitStack() as stack:
            for t in self.items:
                stack.enter_context(t.study(name))
            yield

    def start(self, name: str, cfg: dict[str, Any], run_dir: Path) -> None:
        for t in self.items:
            t.start(name, cfg, run_dir)

    def epoch(self, row: dict[str, Any]) -> None:
        for t in self.items:
            t.epoch(row)

    def end(self, run_dir: Path, status: str) -> None:
        for t in self.items:
            t.end(run_dir, status)

    def replay(self, name: str, run_dir: Path) -> None:
        """Log a finished run from its files (a run that trained on a Ray worker)."""
        from .runs import RunDir
        run = RunDir(run_dir)
        info = run.read_info()
        self.start(name, info["config"], run.path)
        for row in run.read_history():
            self.epoch(row)
        self.end(run.path, info.get("status", "complete"))
