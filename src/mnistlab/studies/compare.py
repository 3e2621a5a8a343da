"""Studies: several configs x several seeds, a comparison table, an overlay figure and ensembles.

Model selection uses validation only: each run is read at its best-validation epoch, and the test
accuracy reported is the one at that epoch. Runs already complete are skipped and interrupted ones
resumed, so a study that was stopped picks up where it was. A run that diverges is a row entry that says
so, and the study goes on: the table is always written, and the caller's exit code says whether every
run completed.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import shutil
import statistics
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..core import checkpoint, checks, config, data, datasets
from ..core.experiment import format_row, resolve_precision, resume, run
from ..core.hardware import resolve_device
from ..core.metrics import predict_proba, summarize
from ..core.runs import (
    COMPARE_RECORD,
    COMPARE_TABLE,
    RunDir,
    atomic_write,
    check_study_dir,
    remove_stale_temp,
    study_run_dir,
    study_tracking,
    validation_curves,
)
from ..errors import DivergenceError, MnistlabError
from ..output.plots import overlay_figure
from ..text import md_cell, mean_epoch, plural

if TYPE_CHECKING:
    from ..output.tracking import Trackers
    from . import ray_executor

Log = Callable[[str], None]


@dataclass
class StudyRow:
    label: str
    name: str
    runs: list[dict[str, Any]]  # one summary per complete seed
    parameters: int | None
    ensemble_test_acc: float | None = None
    planned: int = 0  # seeds the study asked for (0: as many as runs)
    diverged: list[int] = field(default_factory=list)  # seeds whose run diverged

    @property
    def unfinished(self) -> int:
        return max(0, self.planned - len(self.runs) - len(self.diverged))

    @property
    def threads(self) -> list[int]:
        """The torch thread counts the row's runs trained with (several: their numbers are not comparable
        to the last digit)."""
        return sorted({t for r in self.runs for t in r.get("threads", [])})

    def stat(self, key: str) -> tuple[float, float]:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        if not values:
            return math.nan, math.nan
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def load_configs(paths: Sequence[str | Path], overrides: dict[str, Any] | None = None) -> list[config.Config]:
    """Load the study's configs, each with ``overrides`` (dotted key -> value) applied; they must agree on
    the dataset and have distinct names."""
    cfgs = [datasets.pin_dir(_overridden(checks.load_config(p), overrides or {})) for p in paths]
    names = [c.name for c in cfgs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise MnistlabError(f"configs in a study need distinct names; repeated: {', '.join(sorted(dup))}")
    first = cfgs[0]
    for path, c in zip(paths, cfgs, strict=True):
        if (c.data.dataset, c.data.dir, c.data.val_fraction) != (
            first.data.dataset,
            first.data.dir,
            first.data.val_fraction,
        ):
            raise MnistlabError(
                f"{path} uses another dataset or split (data.dataset={c.data.dataset!r}, "
                f"data.dir={c.data.dir!r}, val_fraction={c.data.val_fraction}) than {paths[0]}: a "
                f"comparison needs the same data"
            )
    return cfgs


# overrides that change where or how fast a run trains, not what it is: a label need not mention them
_NOT_THE_EXPERIMENT = ("train.threads", "train.device", "data.dir")


def _overridden(cfg: config.Config, overrides: dict[str, Any]) -> config.Config:
    """``cfg`` with ``overrides`` applied; its label says what they changed (a 784-64-10 net trained with
    --hidden 64 is not "The report's MLP" any more)."""
    new = checks.set_values(cfg, overrides)
    old_d, new_d = config.to_dict(cfg), config.to_dict(new)
    changed = []
    for key in overrides:
        section, _, leaf = key.partition(".")
        if leaf and key not in _NOT_THE_EXPERIMENT and old_d[section][leaf] != new_d[section][leaf]:
            changed.append(f"{key}={new_d[section][leaf]}".replace(" ", ""))
    if not changed:
        return new
    return checks.set_values(new, {"label": f"{cfg.label or cfg.name} ({', '.join(changed)})"})


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config without what does not define the experiment: its table label and thread count. Keys added
    to mnistlab after a run was made take their defaults, so older runs still compare."""
    cfg = config.to_dict(datasets.pin_dir(config.from_dict(cfg)))  # runs of older versions kept data.dir relative
    return {**cfg, "label": "", "train": {**cfg["train"], "threads": 0}}


def _same_experiment(info: dict[str, Any], planned: config.Config) -> bool:
    """Whether the run recorded in ``info`` (run.json) is ``planned``'s. The run's config holds the precision
    it trained in ("auto" resolved, bf16 fallen back to fp32), so the planned config is compared with the
    precision the run was asked for (``precision_requested``); a run made before that was recorded is
    compared with the planned precision as it resolves on this machine."""
    recorded = info["config"]
    if "precision_requested" in info:
        recorded = {**recorded, "train": {**recorded["train"], "precision": info["precision_requested"]}}
    else:
        planned = resolve_precision(planned, resolve_device(planned.train.device))
    return _comparable(recorded) == _comparable(config.to_dict(planned))


def _run_summary(run_dir: RunDir) -> dict[str, Any]:
    """One finished run, read at its best-validation epoch (its last epoch when it has no validation set)."""
    info, history = run_dir.read_info(), run_dir.read_history()
    s = summarize(history)
    env = info.get("environment", {})
    threads = {e.get("torch_threads") for e in [env, *(r.get("environment", {}) for r in info.get("resumed", []))]}
    return {
        "seed": info["config"]["train"]["seed"],
        "epochs": len(history),
        "parameters": info.get("parameters"),
        "threads": sorted(t for t in threads if t is not None),
        "node": info.get("node", {}).get("hostname"),
        "device": env.get("cuda_device") if env.get("device") == "cuda" else env.get("device"),
        "train_seconds": info.get("train_seconds"),
        "final_test_acc": s["final_test_acc"],
        "best_epoch": s.get("best_epoch", len(history)),
        "best_val_acc": s.get("best_val_acc"),
        "convergence_epoch": s.get("convergence_epoch"),
        "test_acc": s.get("test_acc_at_best_val", s["final_test_acc"]),
    }


@dataclass
class Job:
    """One (config, seed) run of a study and what its directory holds now."""

    cfg: config.Config  # with train.seed set
    run_dir: RunDir
    status: str | None  # run.json's status, None when there is no run yet

    @property
    def title(self) -> str:
        return str(
            study_run_dir(".", self.cfg.name, self.cfg.train.seed)
        )  # its directory in the study: never "seed seed 123"


def plan_study(cfgs: list[config.Config], seeds: int, out: Path) -> list[Job]:
    """The study's runs, ``out/NAME/seedS`` for seeds train.seed, train.seed + 1, ...; a directory that
    holds a run of a different config is refused."""
    jobs = []
    remove_stale_temp(out)
    for cfg in cfgs:
        for leftover in (out / cfg.name).glob(".seed*"):  # a run being put in place when its driver died
            if leftover.is_dir() and leftover.suffix in (".tmp", ".old"):
                shutil.rmtree(leftover, ignore_errors=True)
        for i in range(seeds):
            seeded = checks.set_values(cfg, {"train.seed": cfg.train.seed + i})
            run_dir = RunDir(study_run_dir(out, cfg.name, seeded.train.seed))
            info = run_dir.read_info() if run_dir.file("run.json").is_file() else {}
            status = info.get("status")
            if status is not None and not _same_experiment(info, seeded):
                raise MnistlabError(
                    f"{run_dir.path} holds a run of a different {cfg.name} config; delete it or choose another --out"
                )
            jobs.append(Job(seeded, run_dir, status))
    return jobs


def _status(run_dir: RunDir) -> str | None:
    try:
        return run_dir.read_info().get("status") if run_dir.file("run.json").is_file() else None
    except MnistlabError:
        return None


def study_rows(cfgs: list[config.Config], jobs: list[Job]) -> list[StudyRow]:
    """One row per config from what its run directories hold now: complete runs summarised, diverged ones
    named by seed, the rest counted as unfinished."""
    rows = []
    for cfg in cfgs:
        mine = [j for j in jobs if j.cfg.name == cfg.name]
        status = {j.cfg.train.seed: _status(j.run_dir) for j in mine}
        summaries = [_run_summary(j.run_dir) for j in mine if status[j.cfg.train.seed] == "complete"]
        parameters = next((j.run_dir.read_info().get("parameters") for j in mine if status[j.cfg.train.seed]), None)
        rows.append(
            StudyRow(
                cfg.label or cfg.name,
                cfg.name,
                summaries,
                parameters,
                planned=len(mine),
                diverged=[seed for seed, st in status.items() if st == "diverged"],
            )
        )
    return rows


def current_rows(cfgs: list[config.Config], seeds: int, out: Path) -> list[StudyRow]:
    """The study's rows as its directory holds them now (e.g. after Ctrl-C: the finished runs)."""
    return study_rows(cfgs, plan_study(cfgs, seeds, out))


def incomplete(rows: list[StudyRow]) -> str | None:
    """None when every planned run completed, else one line naming what did not."""
    diverged = [f"{r.name} seed {s}" for r in rows for s in r.diverged]
    unfinished = sum(r.unfinished for r in rows)
    if not diverged and not unfinished:
        return None
    parts = []
    if diverged:
        parts.append(
            f"{len(diverged)} run{'s' if len(diverged) > 1 else ''} diverged ({', '.join(diverged)}; "
            f"loss NaN or infinite: try a smaller optim.lr)"
        )
    if unfinished:
        parts.append(f"{unfinished} run{'s' if unfinished > 1 else ''} did not finish")
    return "; ".join(parts) + "; the table holds the others"


def mixed_threads(rows: list[StudyRow]) -> list[str]:
    """A warning per row whose runs trained with different torch thread counts."""
    return [
        f"{r.label}: its runs used {' and '.join(map(str, r.threads))} threads; numbers made with different "
        f"thread counts differ in the last digits (set --threads to make them equal)"
        for r in rows
        if len(r.threads) > 1
    ]


@contextmanager
def _study(cfgs: list[config.Config], seeds: int, out: Path, tracker: Trackers | None) -> Iterator[None]:
    """A comparison's frame: ``out`` checked to hold no other kind of study, the study recorded in study.json
    (with its trackers' identity, :func:`study_tracking`), and, whatever stops it, the table of the runs that
    finished written first (the error that stopped it is the one raised)."""
    check_study_dir(out, "compare")
    with study_tracking(out, "compare", tracker):
        try:
            yield
        except BaseException:
            with contextlib.suppress(Exception):
                write_outputs(current_rows(cfgs, seeds, out), out)
            raise


def _finish(rows: list[StudyRow], out: Path, ensemble: bool) -> list[StudyRow]:
    if ensemble:
        add_ensembles(rows, out)
    write_outputs(rows, out)
    return rows


def run_study(
    cfgs: list[config.Config],
    seeds: int,
    out: Path,
    log: Log = print,
    show_progress: bool = False,
    tracker: Trackers | None = None,
    ensemble: bool = False,
) -> list[StudyRow]:
    """Train each config for ``seeds`` seeds, one run after another in this process; complete runs are
    skipped and interrupted ones resumed from their checkpoints. Writes the study's tables and curves
    (:func:`write_outputs`; with ``ensemble``, each config's ensemble test accuracy too), and the table of the
    finished runs when something stops it. Raises MnistlabError when ``out`` holds another kind of study."""
    with _study(cfgs, seeds, out, tracker):
        return _finish(_run_here(cfgs, seeds, out, log, show_progress, tracker), out, ensemble)


def _run_here(
    cfgs: list[config.Config], seeds: int, out: Path, log: Log, show_progress: bool, tracker: Trackers | None
) -> list[StudyRow]:
    jobs = plan_study(cfgs, seeds, out)
    for job in jobs:
        if job.status in ("complete", "diverged"):
            log(
                f"{job.title}: {job.status}, skipped"
                + (" (delete its directory to run it again)" if job.status == "diverged" else "")
            )
            continue
        try:
            if job.status in ("interrupted", "running") and checkpoint.exists(job.run_dir):
                log(f"{job.title}: resuming")
                resume(job.run_dir.path, log=log, show_progress=show_progress, observers=list(tracker or ()))
            else:
                log(f"{job.title}: training")
                run(
                    job.cfg,
                    job.run_dir.path,
                    overwrite=job.status is not None,
                    log=log,
                    show_progress=show_progress,
                    observers=list(tracker or ()),
                )
        except DivergenceError as e:
            log(f"{job.title}: {e}; the study goes on")
    return study_rows(cfgs, jobs)


def run_study_ray(
    cfgs: list[config.Config],
    seeds: int,
    out: Path,
    options: ray_executor.RayOptions,
    log: Log = print,
    show_progress: bool = False,
    tracker: Trackers | None = None,
    epoch_lines: bool = False,
    ensemble: bool = False,
) -> list[StudyRow]:
    """The same study (:func:`run_study`: its outputs, records and errors) with each unfinished (config, seed)
    run as one Ray task on the ray_executor.

    The driver (this process) owns ``out``: each finished run's files come back through Ray and are put
    in place atomically as it completes, so an interrupted study keeps every run that finished and a
    rerun skips them. Unfinished runs start over (their partial state lived on the workers). With
    ``epoch_lines``, each run's epochs are logged as they finish on the workers.
    """
    with _study(cfgs, seeds, out, tracker):
        rows = _run_on_ray(cfgs, seeds, out, options, log, show_progress, tracker, epoch_lines)
        return _finish(rows, out, ensemble)


def _run_on_ray(
    cfgs: list[config.Config],
    seeds: int,
    out: Path,
    options: ray_executor.RayOptions,
    log: Log,
    show_progress: bool,
    tracker: Trackers | None,
    epoch_lines: bool,
) -> list[StudyRow]:
    from tqdm import tqdm

    from . import ray_executor

    jobs = plan_study(cfgs, seeds, out)
    todo = [j for j in jobs if j.status not in ("complete", "diverged")]
    for job in jobs:
        if job.status in ("complete", "diverged"):
            log(f"{job.title}: {job.status}, skipped")
    if not todo:
        return study_rows(cfgs, jobs)
    dataset = datasets.load_for(cfgs[0], log)  # the study's configs share one dataset (load_configs)
    with ray_executor.task_loop(options, dataset, log, tracker, format_row if epoch_lines else None) as loop:
        for job in todo:
            loop.submit(ray_executor.RunTask(job.cfg, job.run_dir.path, job.title, key=job))
        log(
            f"study: {plural(len(todo), 'run')} on Ray ({len(jobs) - len(todo)} already finished), "
            f"{options.request()} per run"
        )
        bar = tqdm(total=len(jobs), initial=len(jobs) - len(todo), unit="run", disable=not show_progress)
        try:
            while loop.pending:
                done = loop.next()
                job = done.task.key
                if done.outcome == "rejected":
                    raise MnistlabError(f"{job.title}: {done.reason}")
                where = f"{done.node['hostname']} ({done.node['node_id'][:8]}, {done.node['device']})"
                if done.outcome == "diverged":
                    log(
                        f"{job.title}: diverged (loss NaN or infinite) after {done.seconds:.0f} s on {where}; "
                        f"the study goes on"
                    )
                else:
                    s = _run_summary(job.run_dir)
                    log(
                        f"{job.title}: test {s['test_acc']:.2f}% at best-val epoch {s['best_epoch']} "
                        f"(val {s['best_val_acc'] if s['best_val_acc'] is not None else float('nan'):.2f}%), "
                        f"{done.seconds:.0f} s on {where}"
                    )
                bar.update()
        finally:
            bar.close()
    return study_rows(cfgs, jobs)


@torch.inference_mode()
def ensemble_test_accuracy(
    run_dirs: Sequence[str | Path], device: str = "cpu", data_dir: str | Path | None = None
) -> float:
    """Test accuracy (%) of the mean softmax of several runs' best-validation models.

    The test set is the first run's data (``data_dir`` where it moved), checked against the SHA-256 each
    run recorded: runs trained on other data are refused."""
    probs: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    ds = None
    for path in run_dirs:
        model, cfg = checkpoint.load_best_model(path, device)
        if ds is None:
            ds = datasets.load_for_run(path, cfg, data_dir)
            x, labels = data.to_float(ds.test_images).to(device), ds.test_labels.to(device)
        else:
            recorded = RunDir(path).read_info().get("environment", {}).get("data_sha256")
            if recorded != ds.checksum:
                raise MnistlabError(
                    f"{path} was trained on other data than {run_dirs[0]}: an ensemble needs one test set"
                )
        p = predict_proba(model, x, 2000)
        probs = p if probs is None else probs + p
    assert probs is not None and labels is not None  # run_dirs is not empty (the CLI asks for at least one)
    return 100.0 * (probs.argmax(1) == labels).float().mean().item()


def add_ensembles(rows: list[StudyRow], out: Path, device: str = "cpu") -> None:
    for row in rows:
        if len(row.runs) > 1:
            row.ensemble_test_acc = ensemble_test_accuracy(
                [study_run_dir(out, row.name, r["seed"]) for r in row.runs], device
            )


def _pm(mean: float, std: float, digits: int = 2) -> str:
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


TABLE_COLUMNS = (
    "config",
    "name",
    "seeds",
    "test_acc_mean",
    "test_acc_std",
    "best_val_acc_mean",
    "best_epoch_mean",
    "converged_epochs",
    "epochs",
    "parameters",
    "train_seconds_per_run",
    "ran_on",
    "threads",
    "ensemble_test_acc",
    "planned",
    "diverged_seeds",
)


def _num(value: float, digits: int) -> float | None:
    return None if math.isnan(value) else round(value, digits)


def table_records(rows: list[StudyRow]) -> list[dict[str, Any]]:
    recs = []
    for r in rows:
        t, v = r.stat("test_acc"), r.stat("best_val_acc")
        recs.append(
            {
                "config": r.label,
                "name": r.name,
                "seeds": len(r.runs),
                "test_acc_mean": _num(t[0], 3),
                "test_acc_std": _num(t[1], 3),
                "best_val_acc_mean": _num(v[0], 3),
                "best_epoch_mean": _num(r.stat("best_epoch")[0], 1),
                "converged_epochs": _converged(r),
                "epochs": _num(r.stat("epochs")[0], 1),
                "parameters": r.parameters,
                "train_seconds_per_run": _num(r.stat("train_seconds")[0], 1),
                "ran_on": _ran_on(r),
                "threads": ", ".join(map(str, r.threads)),
                "ensemble_test_acc": None if r.ensemble_test_acc is None else round(r.ensemble_test_acc, 3),
                "planned": r.planned or len(r.runs),
                "diverged_seeds": " ".join(map(str, r.diverged)),
            }
        )
    return recs


def _seeds_cell(row: StudyRow) -> str:
    """How many seeds the row's numbers come from, and what happened to the others."""
    planned = row.planned or len(row.runs)
    if len(row.runs) == planned:
        return str(planned)
    notes = [f"{len(row.diverged)} diverged"] if row.diverged else []
    notes += [f"{row.unfinished} unfinished"] if row.unfinished else []
    return f"{len(row.runs)} of {planned} ({', '.join(notes)})"


def _converged(row: StudyRow) -> str:
    """The convergence epochs over seeds as "min-max" (one seed: its epoch; "-" when none converged). The
    epoch moves with the seed and even with the machine, so a study gives its spread, not one number."""
    epochs = sorted(r["convergence_epoch"] for r in row.runs if r.get("convergence_epoch"))
    if not epochs:
        return "-"
    return str(epochs[0]) if epochs[0] == epochs[-1] else f"{epochs[0]}-{epochs[-1]}"


def _ran_on(row: StudyRow) -> str:
    """The devices a row's runs trained on, e.g. "cpu" or "NVIDIA H200"."""
    return ", ".join(sorted({str(r.get("device") or "?") for r in row.runs}))


def markdown_table(rows: list[StudyRow]) -> str:
    lines = [
        "| config | seeds | test acc % at best-val epoch (mean ± std) | best val acc % | best epoch | converged "
        "(epochs over seeds) | epochs | parameters | train s/run | ran on | threads | ensemble test acc % |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]

    def num(value: float, fmt: str) -> str:
        return "-" if math.isnan(value) else format(value, fmt)

    for r in rows:
        ens = "-" if r.ensemble_test_acc is None else f"{r.ensemble_test_acc:.2f}"
        test = _pm(*r.stat("test_acc")) if r.runs else "diverged" if r.diverged else "-"
        params = "-" if r.parameters is None else f"{r.parameters:,}"
        best_epoch = r.stat("best_epoch")[0]
        lines.append(
            f"| {md_cell(r.label)} | {_seeds_cell(r)} | {test} | {_pm(*r.stat('best_val_acc'))} | "
            f"{'-' if math.isnan(best_epoch) else mean_epoch(best_epoch)} | {_converged(r)} | "
            f"{num(r.stat('epochs')[0], '.0f')} | {params} | {num(r.stat('train_seconds')[0], '.0f')} | "
            f"{_ran_on(r) or '-'} | {', '.join(map(str, r.threads)) or '-'} | {ens} |"
        )
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[StudyRow], out: Path) -> None:
    """compare.md, compare.csv, compare.json and curves.png (validation accuracy per epoch, all configs)."""
    recs = table_records(rows)
    atomic_write(out / COMPARE_TABLE, markdown_table(rows))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in rec.items()} for rec in recs)
    atomic_write(out / "compare.csv", buf.getvalue())
    atomic_write(out / COMPARE_RECORD, json.dumps({"rows": recs, "runs": {r.name: r.runs for r in rows}}, indent=1))
    curves = validation_curves(out, [(r.label, r.name, [s["seed"] for s in r.runs]) for r in rows])
    if curves:
        overlay_figure(
            curves, out / "curves.png", title="Validation accuracy per epoch (mean over seeds, min-max band)"
        )


def read_table(study: Path) -> str:
    """A study's compare.md (its Markdown table), as :func:`write_outputs` wrote it.

    Raises MnistlabError when ``study`` holds none."""
    try:
        return (Path(study) / COMPARE_TABLE).read_text()
    except OSError:
        raise MnistlabError(f"{study} holds no comparison ({COMPARE_TABLE}); run mnistlab compare first") from None


def read_record(study: Path) -> dict[str, Any]:
    """A study's compare.json, as :func:`write_outputs` wrote it: ``{"rows": [table_records row, ...],
    "runs": {config name: [run summary with "seed", ...]}}``.

    Raises MnistlabError when ``study`` holds none or it is not that shape."""
    path = Path(study) / COMPARE_RECORD
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        raise MnistlabError(f"{path} is missing or unreadable; run mnistlab compare again") from None
    if not (isinstance(doc, dict) and isinstance(doc.get("rows"), list) and isinstance(doc.get("runs"), dict)):
        raise MnistlabError(f"{path} is not a comparison's record (rows, runs)")
    return doc
