"""Run directories: the resolved config, environment, per-epoch history, all written atomically.

Layout of a run directory::

    config.toml     the resolved config
    run.json        environment (versions, CPU and its flags, torch's build, threads, device, data checksum,
                    seed), status and summary
    metrics.csv     one row per epoch: epoch, train_loss, val_loss, val_acc, test_loss, test_acc, lr,
                    seconds (training steps), eval_seconds
    checkpoint.safetensors  the full training state after the last epoch, metadata inside (resume)
    best.safetensors   the weights of the best-validation epoch (or the last epoch without validation)
    metrics.json    the same rows as a list of objects
    accuracy.png    validation and test accuracy per epoch, convergence epoch marked
    loss.png        losses per epoch
    tensorboard/    TensorBoard's event files (``--track tensorboard``)

A study directory (``compare`` or ``tune``) records its kind in ``study.json``; each command refuses a
directory of the other kind before it writes anything (:func:`check_study_dir`).
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .. import __version__
from ..errors import MnistlabError
from . import hardware
from .config import Config, dumps, load

if TYPE_CHECKING:
    from .observers import StudyContext

RUN_FILES = (
    "config.toml",
    "run.json",
    "metrics.csv",
    "metrics.json",
    "accuracy.png",
    "loss.png",
    "checkpoint.safetensors",
    "best.safetensors",
)
RUN_DIRS = ("tensorboard",)  # folders that belong to a run (a tracker's files)
CSV_COLUMNS = ("epoch", "train_loss", "val_loss", "val_acc", "test_loss", "test_acc", "lr", "seconds", "eval_seconds")


def umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it
    os.umask(mask)
    return mask


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half of one."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes 0600 files; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only directory...: the user's problem, named with its path
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise MnistlabError(f"cannot write {path}: {e.strerror or e}") from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


LOCK_FILE = ".mnistlab.lock"
TMP_SUFFIX = ".tmp"  # atomic_write's temporary files: ".NAME.RANDOM.tmp", left behind only by a kill


def remove_stale_temp(directory: Path) -> None:
    """Delete temporary files a killed writer left in ``directory`` (callers hold the directory)."""
    for p in Path(directory).glob(f".*{TMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)


@contextmanager
def study_lock(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on a study directory, or fail at once naming the process that holds it.

    The lock is the kernel's (``flock``), so it goes away with its process however that ends; the file
    only says who holds it.
    """
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise MnistlabError(f"cannot lock {directory}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            raise MnistlabError(f"{directory} is in use by {holder}; wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(
            fd,
            f"pid {os.getpid()} on {socket.gethostname()} since {now()} "
            f"({' '.join(['mnistlab', *sys.argv[1:2]])})\n".encode(),
            0,
        )
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _json_value(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def history_csv(history: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    return out.getvalue()


def environment(device: torch.device, dataset_checksum: str, data_source: str, seed: int) -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: versions, threads, device, data and seed."""
    import numpy

    env = {
        "mnistlab": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": hardware.cpu(),  # model, the flags that decide speed (AMX, AVX512-BF16, AVX-512, AVX2), kind
        "torch_build": hardware.torch_build(),
        "device": str(device),
        "data_source": data_source,
        "data_sha256": dataset_checksum,
        "seed": seed,
        "argv": sys.argv,
    }
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunDir:
    """A run's output directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> RunDir:
        """Make the directory; refuse one that already holds a run unless ``overwrite``."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise MnistlabError(f"output path {run.path} exists and is not a directory")
        foreign = (
            sorted(
                p.name
                for p in run.path.iterdir()
                if p.name not in RUN_FILES + RUN_DIRS and not (p.name.startswith(".") and p.name.endswith(TMP_SUFFIX))
            )
            if run.path.is_dir()
            else []
        )
        if foreign:
            raise MnistlabError(
                f"output directory {run.path} holds files that are not a run's ({foreign[0]}); "
                f"choose an empty or new --out"
            )
        held = [f for f in RUN_FILES + RUN_DIRS if (run.path / f).exists()]
        if held and not overwrite:
            raise MnistlabError(
                f"output directory {run.path} already holds a run ({held[0]}); pass --overwrite or choose another --out"
            )
        try:
            run.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MnistlabError(f"cannot create output directory {run.path}: {e.strerror or e}") from None
        for f in held:
            if (run.path / f).is_dir():
                shutil.rmtree(run.path / f)
            else:
                (run.path / f).unlink()
        remove_stale_temp(run.path)
        return run

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, cfg: Config) -> None:
        atomic_write(self.file("config.toml"), dumps(cfg))

    def write_info(self, info: dict[str, Any]) -> None:
        atomic_write(self.file("run.json"), json.dumps(info, indent=2, default=_json_value) + "\n")

    def write_history(self, history: list[dict[str, Any]]) -> None:
        atomic_write(self.file("metrics.csv"), history_csv(history))
        rows = [{k: _json_value(v) for k, v in row.items()} for row in history]
        atomic_write(self.file("metrics.json"), json.dumps(rows, indent=1) + "\n")

    # ------------------------------------------------------------ reading back

    def is_run(self) -> bool:
        return self.file("metrics.csv").is_file()

    def read_config(self) -> Config:
        return load(self.file("config.toml"))

    def read_info(self) -> dict[str, Any]:
        try:
            return json.loads(self.file("run.json").read_text())
        except (OSError, ValueError) as e:
            raise MnistlabError(f"cannot read {self.file('run.json')}: {e}") from None

    def read_history(self, allow_empty: bool = False) -> list[dict[str, Any]]:
        """Per-epoch rows from metrics.csv (the one reader every consumer uses): floats, ``epoch`` an int,
        empty cells None. Losses may be NaN or infinite (a run that diverged keeps that epoch's row).

        Raises MnistlabError in one line for a missing, binary, empty or header-only (unless
        ``allow_empty``), truncated or otherwise malformed file: unknown or missing columns, a short row, a
        value that is not a number, epochs not numbered 1, 2, ..., an accuracy that is not in [0, 100]."""
        path = self.file("metrics.csv")
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise MnistlabError(f"{self.path} is not a run directory (no metrics.csv)") from None
        except OSError as e:
            raise MnistlabError(f"cannot read {path}: {e.strerror or e}") from None
        try:
            if b"\0" in raw:
                raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL byte")
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MnistlabError(f"{path} is not a metrics file (binary, not CSV text)") from None
        reader = csv.reader(io.StringIO(text))
        header = next(reader, None)
        if not header:
            if allow_empty:
                return []
            raise MnistlabError(f"{path} is empty: the run recorded no epochs")
        unknown = [c for c in header if c not in CSV_COLUMNS]
        if unknown or "epoch" not in header or "train_loss" not in header:
            raise MnistlabError(
                f"{path} has no valid header (expected the columns {','.join(CSV_COLUMNS)}; "
                f"got {','.join(header)[:80]})"
            )
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:  # every consumer may read every column the writer writes
            raise MnistlabError(f"{path} lacks the column{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
        rows: list[dict[str, Any]] = []
        for i, cells in enumerate(reader, 1):
            if len(cells) != len(header):
                raise MnistlabError(
                    f"{path}: row {i} is truncated or malformed ({len(cells)} of {len(header)} columns)"
                )
            row: dict[str, Any] = {}
            for key, cell in zip(header, cells, strict=True):
                try:
                    row[key] = None if cell == "" else float(cell)
                except ValueError:
                    raise MnistlabError(f"{path}: row {i}: {key} is {cell[:20]!r}, not a number") from None
            if row["epoch"] != i:
                epoch = row["epoch"]
                shown = "missing" if epoch is None else f"{epoch:.0f}" if epoch.is_integer() else str(epoch)
                raise MnistlabError(f"{path}: row {i} is epoch {shown}; epochs must run 1, 2, 3, ...")
            row["epoch"] = i
            for key in ("val_acc", "test_acc"):
                if row.get(key) is not None and not 0 <= row[key] <= 100:
                    raise MnistlabError(f"{path}: epoch {i}: {key} is {row[key]}, not an accuracy in [0, 100]")
            _check_cells(path, row, rows[0] if rows else None)
            rows.append(row)
        if not rows and not allow_empty:
            raise MnistlabError(f"{path} holds no epochs (a header only)")
        return rows


# cells a finished epoch always has (a diverged epoch only ALWAYS_CELLS); the validation columns are empty in
# every row of a run without a validation set (data.train_on_val) and filled in every row otherwise
ALWAYS_CELLS = ("train_loss", "lr", "seconds")
EVALUATED_CELLS = ("test_loss", "test_acc", "eval_seconds")
VALIDATION_CELLS = ("val_loss", "val_acc")


def _check_cells(path: Path, row: dict[str, Any], first: dict[str, Any] | None) -> None:
    """Refuse a row with an empty cell the writer always fills: what readers may take as present."""
    loss = row["train_loss"]
    evaluated = loss is not None and math.isfinite(loss)  # a diverged epoch was never evaluated
    required = ALWAYS_CELLS + (EVALUATED_CELLS if evaluated else ())
    reference = row if first is None else first
    if evaluated and any(reference[k] is not None for k in VALIDATION_CELLS):
        required += VALIDATION_CELLS  # validated in the first epoch: validated in every epoch, both cells
    empty = [k for k in required if row[k] is None]
    if empty:
        raise MnistlabError(f"{path}: epoch {row['epoch']} has no {', '.join(empty)} (an empty cell)")


def study_run_dir(study: str | Path, name: str, seed: int | str) -> Path:
    """Where a study keeps the run of config ``name`` with ``train.seed = seed``: ``STUDY/NAME/seedS`` (the one
    spelling of a study's layout; ``study_run_dir(".", name, seed)`` is the run's path inside its study;
    ``seed="*"`` makes a glob pattern)."""
    return Path(study) / name / f"seed{seed}"


def validation_curves(study: Path, entries: Iterable[tuple[str, str, Iterable[int]]]) -> dict[str, list[list[float]]]:
    """Validation accuracy per epoch of a study's runs, by label. ``entries`` are (label, config name,
    seeds), the runs being ``study/NAME/seedS``; a label whose runs have no validation set is left out."""
    curves = {}
    for label, name, seeds in entries:
        hist = [RunDir(study_run_dir(study, name, s)).read_history() for s in seeds]
        if hist and all(h and h[0].get("val_acc") is not None for h in hist):
            curves[label] = [[row["val_acc"] for row in h] for h in hist]
    return curves


# ---------------------------------------------------------------- study directories

STUDY_FILE = "study.json"  # every study's kind and trackers' identity
TUNE_RECORD = "tune.json"  # tune's search: options, space, storage and tag (studies/tune.py)
COMPARE_TABLE = "compare.md"  # compare's table, and its rows and run directories (studies/compare.py)
COMPARE_RECORD = "compare.json"
# kind -> files that mark a study of that kind made before study.json existed
STUDY_MARKERS = {"tune": (TUNE_RECORD,), "compare": (COMPARE_TABLE, COMPARE_RECORD)}


def study_kind(directory: Path) -> str | None:
    """What ``directory`` holds: "compare" or "tune" (a study), "run" (a run directory), None (empty, absent or
    other files). Studies made before ``study.json`` existed are recognised by their files."""
    d = Path(directory)
    try:
        return json.loads((d / STUDY_FILE).read_text())["kind"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    for kind, markers in STUDY_MARKERS.items():
        if any((d / name).is_file() for name in markers):
            return kind
    if any(d.glob(str(study_run_dir(".", "*", "*") / "run.json"))):
        return "compare"
    if (d / "run.json").is_file() or (d / "config.toml").is_file():
        return "run"
    return None


def check_study_dir(directory: Path, kind: str) -> None:
    """Refuse, before anything is written, a study directory that holds a study of another kind or a run."""
    found = study_kind(directory)
    if found not in (None, kind):
        what = "a run" if found == "run" else f"a `mnistlab {found}` study"
        raise MnistlabError(f"{directory} holds {what}; `mnistlab {kind}` needs a directory of its own (--out)")


def read_study(directory: Path) -> dict[str, Any]:
    """study.json's record (empty for a study made before it existed)."""
    try:
        return json.loads((Path(directory) / STUDY_FILE).read_text())
    except (OSError, ValueError):
        return {}


def write_study(directory: Path, kind: str, **fields: Any) -> None:
    """Record the study's kind (and ``fields``, e.g. its trackers' identity) in study.json."""
    record = {**read_study(directory), "kind": kind, **fields}
    record.setdefault("created", now())
    atomic_write(Path(directory) / STUDY_FILE, json.dumps(record, indent=1) + "\n")


@contextmanager
def study_tracking(directory: Path, kind: str, tracker: StudyContext | None = None) -> Iterator[None]:
    """Record the study's kind in study.json and, with ``tracker``, hold the study's tracking context (an
    MLflow parent run) around the block: it continues the one recorded in study.json and records its identity
    there. compare and tune run their studies inside it, so a library caller's study is recorded as the
    CLI's is."""
    if tracker is None:
        write_study(directory, kind)
        yield
        return
    with tracker.study(Path(directory).name, read_study(directory).get("tracking")) as identity:
        write_study(directory, kind, **({"tracking": identity} if identity else {}))
        yield
