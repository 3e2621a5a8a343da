"""Ray as the executor of studies: connecting, one run as one Ray task, and the run's files coming back.

:func:`task_loop` is the one loop both studies use (``compare --ray`` and ``tune --ray``): it connects,
checks the per-run request against the nodes, puts the dataset in the object store, submits runs, waits
for them while printing their epochs, puts each finished run's files in place, replays its trackers, and
cancels the runs still pending when the study stops (an error, Ctrl-C). What a finished run means (a row
of a comparison, an Optuna trial) is the caller's.

Workers need no shared filesystem: a task trains into a temporary directory on its own node and returns
the run's files as bytes; the driver, which owns the study directory, writes them into place atomically
(see :func:`write_run_dir`). The dataset travels once through Ray's object store, so workers read no
data files either. Scheduling, placement and retries (a task whose node dies is run again elsewhere)
are Ray's. Ray is imported only here, and only when a study asks for it.

Resource requests are checked against the nodes Ray reports: an embedded Ray (this machine only) refuses
at once a request no node can meet; on a cluster, where an autoscaler may still add such a node, a warning
is printed and the study stops with a message once the request has been unmeetable for
``RayOptions.schedule_timeout`` seconds. Each run's epochs reach the driver's log through a Ray queue.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.runs import umask
from ..errors import MnistlabError

if TYPE_CHECKING:
    from ..core.config import Config
    from ..core.data import Dataset
    from ..core.observers import EpochObserver
    from ..output.tracking import Trackers

# a task whose worker or node dies is retried this many times (Ray's own retry of system failures)
TASK_RETRIES = 3


@dataclass(frozen=True)
class RayOptions:
    """Where and how a study's runs execute: ``address`` None = an embedded local Ray."""

    address: str | None = None
    cpus_per_run: float = 1.0
    gpus_per_run: float = 0.0
    schedule_timeout: float = 600.0  # on a cluster: seconds runs may wait for a node that can take them

    def __post_init__(self) -> None:
        if not (self.cpus_per_run > 0 and math.isfinite(self.cpus_per_run)):
            raise MnistlabError(f"--cpus-per-run must be a finite number > 0, got {self.cpus_per_run}")
        if not (self.gpus_per_run >= 0 and math.isfinite(self.gpus_per_run)):
            raise MnistlabError(f"--gpus-per-run must be a finite number >= 0, got {self.gpus_per_run}")
        if not (self.schedule_timeout > 0 and math.isfinite(self.schedule_timeout)):
            raise MnistlabError(f"--ray-timeout must be a finite number of seconds > 0, got {self.schedule_timeout}")
        if self.address is not None:
            check_address(self.address)
        if self.gpus_per_run > 1 and self.gpus_per_run != int(self.gpus_per_run):
            raise MnistlabError(f"--gpus-per-run above 1 must be a whole number, got {self.gpus_per_run}")

    def task_options(self) -> dict[str, Any]:
        return {
            "num_cpus": self.cpus_per_run,
            "num_gpus": self.gpus_per_run,
            "max_retries": TASK_RETRIES,
            "retry_exceptions": False,
        }

    def threads(self) -> int:
        """Torch threads of a run that does not set train.threads: the CPUs it asked for."""
        return max(1, int(self.cpus_per_run))

    def request(self) -> str:
        return f"{self.cpus_per_run:g} CPU" + (f" + {self.gpus_per_run:g} GPU" if self.gpus_per_run else "")


def check_address(address: str) -> tuple[str, int] | None:
    """The (host, port) of a cluster address (None for ``auto``); a malformed one is one line."""
    if address == "auto":
        return None
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    example = "ray://HOST:10001" if address.startswith("ray://") else "HOST:6379"
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MnistlabError(f"--ray {address!r} needs a host and a port, e.g. {example} (or auto)")
    return host.strip("[]"), int(port)


def _import_ray(embedded: bool = False) -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage statistics unless the user opts in
    if embedded:
        # the embedded Ray serves this process only: keep token authentication (Ray's default for a new
        # local cluster) without its warning, and take the loopback address without probing the internet
        # for one (Ray's switch for single-machine clusters; the probe logs "Failed to determine local IP")
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise MnistlabError("--ray needs Ray: pip install 'mnistlab[scale]'") from None
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast on a HOST:PORT that nothing listens on (ray.init would retry for a minute)."""
    where = check_address(address)
    if where is None:
        return
    try:
        with socket.create_connection(where, timeout=5):
            pass
    except OSError as e:
        raise MnistlabError(f"cannot reach a Ray cluster at {address}: {e.strerror or e}") from None


@contextmanager
def connect(address: str | None) -> Iterator[Any]:
    """Yield the ``ray`` module connected to ``address`` (None: start an embedded local Ray, stopped after)."""
    ray = _import_ray(embedded=not address)
    if ray.is_initialized():  # a caller (a notebook, a test) already connected: use that
        yield ray
        return
    if address:
        _check_reachable(address)
    try:
        if address:
            ray.init(address=address, logging_level="WARNING", log_to_driver=False)
        else:
            # "local": a new Ray of our own, never a cluster that happens to run on this machine
            ray.init(address="local", include_dashboard=False, logging_level="WARNING", log_to_driver=False)
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
    info: dict[str, Any] = {
        "node_id": ctx.get_node_id(),
        "hostname": socket.gethostname(),
        "node_ip": ray.util.get_node_ip_address(),
        "device": "cpu",
    }
    if torch.cuda.is_available() and ray.get_gpu_ids():
        info["device"] = torch.cuda.get_device_name(0)
    return info


def train_in_tempdir(
    cfg_dict: dict[str, Any],
    dataset: Any,
    threads: int,
    observer: Any = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one config on this worker and return ``{"files", "node", "outcome", "seconds", "reason"}``.

    ``files`` maps each file name of the run directory to its bytes. ``outcome`` is "complete",
    "stopped" (``observer``, an :class:`~mnistlab.core.observers.EpochObserver` such as a search's pruning hook,
    raised :class:`~mnistlab.core.experiment.StopRun`), "diverged", or "rejected"
    (the config was refused when the run was set up, e.g. a batch larger than the training set; no files,
    ``reason`` says why). ``progress(row)`` sees each epoch's row (the driver prints it).
    """
    import torch

    from ..core import config
    from ..core.experiment import outcome_of, run
    from ..core.observers import OnEpoch

    observers = [*([OnEpoch(progress)] if progress is not None else []), *([observer] if observer is not None else [])]

    cfg = config.from_dict(cfg_dict)
    if not cfg.train.threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mnistlab-run-") as tmp:
        path = Path(tmp) / "run"
        outcome, reason = outcome_of(lambda: run(cfg, path, log=lambda msg: None, dataset=dataset, observers=observers))
        files = (
            {p.name: p.read_bytes() for p in path.iterdir() if p.is_file() and not p.name.startswith(".")}
            if path.is_dir()
            else {}
        )
    return {
        "files": files,
        "node": node_info(),
        "outcome": outcome,
        "reason": reason,
        "seconds": time.perf_counter() - start,
    }


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


# ---------------------------------------------------------------- resources and waiting


def _nodes(ray: Any) -> list[dict[str, float]]:
    """The total resources of each live node."""
    return [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]


def slots(ray: Any, options: RayOptions) -> int:
    """How many runs of ``options``' size the cluster's nodes hold at once (0: none fits anywhere)."""
    total = 0
    for res in _nodes(ray):
        n = res.get("CPU", 0) // options.cpus_per_run
        if options.gpus_per_run:
            n = min(n, res.get("GPU", 0) // options.gpus_per_run)
        total += int(n)
    return total


def _largest(ray: Any) -> str:
    nodes = _nodes(ray)
    if not nodes:
        return "no live node"
    best = max(nodes, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)))
    return (
        f"{len(nodes)} node{'s' if len(nodes) > 1 else ''}, the largest with {best.get('CPU', 0):g} CPU and "
        f"{best.get('GPU', 0):g} GPU"
    )


def check_resources(ray: Any, options: RayOptions, log: Callable[[str], None]) -> None:
    """Refuse (embedded Ray) or warn about (cluster) a per-run request that no node can meet."""
    if slots(ray, options):
        return
    if options.address is None:
        raise MnistlabError(
            f"no run can start: each asks for {options.request()} (--cpus-per-run, --gpus-per-run) "
            f"but the embedded Ray on this machine has {_largest(ray)}"
        )
    log(
        f"warning: no node of the Ray cluster offers {options.request()} per run now ({_largest(ray)}); runs "
        f"wait for one (an autoscaler may add it) for at most {options.schedule_timeout:g} s"
    )


class EpochProgress:
    """Each run's epochs, sent by Ray workers through a queue actor and printed by the driver, so long runs
    on Ray are not silent."""

    def __init__(self, log: Callable[[str], None], line: Callable[[dict[str, Any]], str] | None = None) -> None:
        from ray.util.queue import Queue

        from ..core.experiment import format_row

        self.queue: Any = Queue(actor_options={"num_cpus": 0})  # takes no CPU a run could use; None once gone
        self.log, self.line = log, line or format_row

    def sender(self, title: str) -> _EpochSender:
        return _EpochSender(self.queue, title)

    def drain(self) -> None:
        while self.queue is not None:
            try:
                title, row = self.queue.get_nowait()
            except queue.Empty:
                return
            except Exception:
                self.queue = None
                return
            self.log(f"{title}: {self.line(row)}")

    def close(self) -> None:
        self.drain()
        if self.queue is not None:
            self.queue.shutdown()


@dataclass
class _EpochSender:
    """The picklable end of :class:`EpochProgress` that a task calls with each epoch's row."""

    queue: Any
    title: str

    def __call__(self, row: dict[str, Any]) -> None:
        with suppress(Exception):
            self.queue.put_nowait((self.title, {k: v for k, v in row.items() if isinstance(v, (int, float, str))}))


class TaskWaiter:
    """Waits for the next finished task of a study while printing the epochs that arrive; on a cluster,
    stops the study once no node has been able to take a run for ``schedule_timeout`` seconds."""

    POLL_S = 0.5
    CHECK_S = 5.0

    def __init__(self, ray: Any, options: RayOptions, progress: EpochProgress | None = None) -> None:
        self.ray, self.options, self.progress = ray, options, progress
        self.checked = time.monotonic()
        self.unmet_since: float | None = None if slots(ray, options) else self.checked

    def next(self, pending: dict[Any, Any]) -> Any:
        """The Ray object ref of a finished task among ``pending``'s keys."""
        while True:
            ready, _ = self.ray.wait(list(pending), num_returns=1, timeout=self.POLL_S)
            if self.progress is not None:
                self.progress.drain()
            if ready:
                return ready[0]
            now = time.monotonic()
            if now - self.checked >= self.CHECK_S:
                self.checked = now
                if slots(self.ray, self.options):
                    self.unmet_since = None
                elif self.unmet_since is None:
                    self.unmet_since = now
                elif now - self.unmet_since >= self.options.schedule_timeout:
                    raise MnistlabError(
                        f"no node of the Ray cluster has offered {self.options.request()} per run "
                        f"for {self.options.schedule_timeout:g} s ({_largest(self.ray)}); lower "
                        f"--cpus-per-run/--gpus-per-run or add such a node, then rerun to resume"
                    )


# ---------------------------------------------------------------- the task loop


@dataclass
class RunTask:
    """One run of a study for :class:`TaskLoop`: its config, the directory its files go to, and the title
    that names it in log lines, epoch lines and trackers (e.g. ``plain/seed123``, ``trial 4``). ``key`` is
    the caller's handle on it (a study's job, a search's trial); ``observer`` watches the run on the worker
    (an :class:`~mnistlab.core.observers.EpochObserver`, picklable, such as a search's pruning hook; its
    ``epoch`` may raise :class:`~mnistlab.core.experiment.StopRun`)."""

    cfg: Config
    path: Path
    title: str
    key: Any = None
    observer: EpochObserver | None = None


@dataclass
class FinishedRun:
    """A task that came back: ``outcome`` as :func:`train_in_tempdir` says it, its files already at
    ``task.path`` (none when the config was rejected), ``seconds`` of training on ``node``."""

    task: RunTask
    outcome: str  # complete | stopped | diverged | rejected
    reason: str
    seconds: float
    node: dict[str, Any]


class TaskLoop:
    """The Ray tasks of one study: :meth:`submit` runs, :meth:`next` takes the next finished one."""

    def __init__(
        self,
        ray: Any,
        options: RayOptions,
        dataset: Dataset,
        tracker: Trackers | None = None,
        progress: EpochProgress | None = None,
    ) -> None:
        self.ray, self.options, self.tracker, self.progress = ray, options, tracker, progress
        self.pending: dict[Any, RunTask] = {}  # Ray object ref -> the run it computes
        self._task = remote(train_in_tempdir, options)
        self._data = ray.put(dataset)  # once through the object store: workers read no data files
        self._waiter = TaskWaiter(ray, options, progress)

    def slots(self) -> int:
        """How many runs the cluster's nodes hold at once (at least 1)."""
        return max(1, slots(self.ray, self.options))

    def submit(self, task: RunTask) -> None:
        from ..core import config

        sender = self.progress.sender(task.title) if self.progress is not None else None
        ref = self._task.remote(config.to_dict(task.cfg), self._data, self.options.threads(), task.observer, sender)
        self.pending[ref] = task

    def next(self) -> FinishedRun:
        """Wait for a run to finish, put its files in place and replay them to the trackers. A task that
        failed raises (a user error on the worker as one line naming the run) and stays pending, so it is
        cancelled and handed to ``on_cancel`` with the others."""
        ref = self._waiter.next(self.pending)
        task = self.pending[ref]
        result = task_result(ref, task.title)
        del self.pending[ref]
        if result["files"]:
            write_run_dir(task.path, result["files"], result["node"])
            if self.tracker:
                self.tracker.replay(task.title, task.path)
        return FinishedRun(task, result["outcome"], result.get("reason", ""), result["seconds"], result["node"])

    def cancel(self) -> None:
        for ref in self.pending:
            self.ray.cancel(ref, force=True)


@contextmanager
def task_loop(
    options: RayOptions,
    dataset: Dataset,
    log: Callable[[str], None],
    tracker: Trackers | None = None,
    epoch_line: Callable[[dict[str, Any]], str] | None = None,
    on_cancel: Callable[[RunTask], None] | None = None,
) -> Iterator[TaskLoop]:
    """Connect to Ray (:func:`connect`), check the per-run request (:func:`check_resources`) and yield a
    :class:`TaskLoop` for ``dataset``. ``epoch_line(row)``: log each run's epochs as the workers finish them
    (None: no epoch lines). When the block raises (an error, Ctrl-C), every pending task is cancelled and
    given to ``on_cancel`` before the exception goes on."""
    with connect(options.address) as ray:
        check_resources(ray, options, log)
        progress = EpochProgress(log, epoch_line) if epoch_line is not None else None
        try:
            loop = TaskLoop(ray, options, dataset, tracker, progress)
            try:
                yield loop
            except BaseException:
                loop.cancel()
                if on_cancel is not None:
                    for task in loop.pending.values():
                        on_cancel(task)
                raise
        finally:
            if progress is not None:
                progress.close()
