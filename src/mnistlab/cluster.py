"""Ray as the executor of studies: connecting, one run as one Ray task, and the run's files coming back.

Workers need no shared filesystem: a task trains into a temporary directory on its own node and returns
the run's files as bytes; the driver, which owns the study directory, writes them into place atomically
(see :func:`write_run_dir`). The dataset travels once through Ray's object store, so workers read no
data files either. Scheduling, placement and retries (a task whose node dies is run again elsewhere)
are Ray's. Ray is imported only here, and only when a study asks for it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import MnistlabError
from .runs import umask

# a task whose worker or node dies is retried this many times (Ray's own retry of system failures)
TASK_RETRIES = 3


@dataclass(frozen=True)
class RayOptions:
    """Where and how a study's runs execute: ``address`` None = an embedded local Ray."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0

    def __post_init__(self) -> None:
        if not self.cpus_per_run > 0:
            raise MnistlabError(f"--cpus-per-run must be > 0, got {self.cpus_per_run}")
        if not 0 <= self.gpus_per_run:
            raise MnistlabError(f"--gpus-per-run must be >= 0, got {self.gpus_per_run}")
        if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
            raise MnistlabError(f"--gpus-per-run above 1 must be a whole number, got {self.gpus_per_run}")

    def task_options(self) -> dict[str, Any]:
        return {"num_cpus": self.cpus_per_run, "num_gpus": self.gpus_per_run, "max_retries": TASK_RETRIES,
                "retry_exceptions": False}

    def threads(self) -> int:
        """Torch threads of a run that does not set train.threads: the CPUs it asked for."""
        return max(1, int(self.cpus_per_run))


def _import_ray() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage statistics unless the user opts in
    try:
        import ray
    except ImportError:
        raise MnistlabError("--ray needs Ray: pip install 'mnistlab[scale]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast on a HOST:PORT that nothing listens on (ray.init would retry for a minute)."""
    host_port = address.removeprefix("ray://")
    if address == "auto" or ":" not in host_port:
        return
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5):
            pass
    except (OSError, ValueError) as e:
        raise MnistlabError(f"cannot reach a Ray cluster at {address}: {getattr(e, 'strerror', None) or e}") from None


@contextmanager
def connect(address: str | None) -> Iterator[Any]:
    """Yield the ``ray`` module connected to ``address`` (None: start an embedded local Ray, stopped after)."""
    ray = _import_ray()
    if ray.is_initialized():  # a caller (a notebook, a test) already connected: use that
        yield ray
        return
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        else:
            ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or "an embedded local Ray"
        raise MnistlabError(f"cannot start or join Ray ({where}): {str(e).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def node_info() -> dict[str, Any]:
    """The node and device this process runs on (inside a Ray task: the worker's)."""
    import ray
    import torch

    ctx = ray.get_runtime_context()
    info: dict[str, Any] = {"node_id": ctx.get_node_id(), "hostname": socket.gethostname(),
                            "node_ip": ray.util.get_node_ip_address(), "device": "cpu"}
    if torch.cuda.is_available() and ray.get_gpu_ids():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def train_in_tempdir(cfg_dict: dict[str, Any], dataset: Any, threads: int,
                     on_epoch: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one config on this worker and return ``{"files", "node", "outcome"}``.

    ``files`` maps each file name of the run directory to its bytes. ``outcome`` is "complete",
    "stopped" (an ``on_epoch`` hook raised :class:`~mnistlab.experiment.StopRun`) or "diverged".
    """
    import torch

    from . import config
    from .errors import DivergenceError
    from .experiment import StopRun, run

    cfg = config.from_dict(cfg_dict)
    if not cfg.train.threads:
        torch.set_num_threads(threads)
    outcome = "complete"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnistlab-run-") as tmp:
        path = Path(tmp) / "run"
        try:
            run(cfg, path, log=lambda msg: None, dataset=dataset, on_epoch=on_epoch)
        except StopRun:
            outcome = "stopped"
        except DivergenceError:
            outcome = "diverged"
        files = {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and not p.name.startswith(".")}
    return {"files": files, "node": node_info(), "outcome": outcome, "seconds": time.perf_counter() - start}


def write_run_dir(path: Path, files: dict[str, bytes], node: dict[str, Any]) -> None:
    """Put a finished run's files at ``path`` in one step: written into a hidden sibling directory, then
    renamed into place, so a reader (or a rerun after a crash) sees no run or the whole run, never part.

    run.json gains ``"node"``: where the run trained (Ray node id, host, address, device).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~umask())  # mkdtemp makes 0700 directories; give the usual permissions
        for name, raw in files.items():
            if name == "run.json":
                info = json.loads(raw)
                info["node"] = node
                raw = (json.dumps(info, indent=2) + "\n").encode()
            (tmp / name).write_bytes(raw)
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if path.exists():  # an unfinished run left by an earlier sequential study: move it aside first
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / "run")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def task_result(ref: Any, title: str) -> Any:
    """The value of a finished Ray task; a user error raised on the worker comes back as one line naming
    ``title`` (other failures propagate as they are)."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, MnistlabError):
            raise MnistlabError(f"{title}: {e.cause}") from None
        raise


def remote(fn: Callable[..., Any], options: RayOptions) -> Any:
    """``fn`` as a Ray remote function with the run's resources and Ray's retries of system failures."""
    import ray

    return ray.remote(fn).options(**options.task_options())
