"""Hyperparameter search: an Optuna study over config keys, ranked by validation accuracy only.

Optuna owns the search (a seeded TPE or random sampler, a median or successive-halving pruner fed every
epoch's validation accuracy) and the study's storage: by default SQLite inside the study directory, or
any database URL (``postgresql://...``) that several drivers on several machines share, Optuna's own
distributed mode. Trials run in this process or, with ``--ray``, as Ray tasks; a Ray worker reports its
epochs through Optuna's gRPC storage proxy served by the driver, so pruning works across nodes.

The budget is exact across drivers: trial numbers are handed out by the storage, and a driver that draws
a number beyond the budget marks that trial failed ("over budget") without running it and stops.
"""

from __future__ import annotations

import io
import json
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import checks, config, data, datasets
from .errors import ConfigError, DivergenceError, MnistlabError
from .experiment import StopRun, run
from .metrics import summarize
from .runs import RunDir, atomic_write
from .space import Param, space_to_dict

Log = Callable[[str], None]
STUDY_FILE = "tune.json"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "halving", "none")


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
        if self.seed < 0 or self.pruner_startup < 0 or self.pruner_warmup < 0:
            raise ConfigError("--seed, --pruner-startup and --pruner-warmup must be >= 0")

    def make_sampler(self) -> Any:
        import optuna
        if self.sampler == "random":
            return optuna.samplers.RandomSampler(seed=self.seed)
        return optuna.samplers.TPESampler(seed=self.seed, constant_liar=True)  # liar: parallel trials differ

    def make_pruner(self) -> Any:
        import optuna
        if self.pruner == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.pruner_startup,
                                               n_warmup_steps=self.pruner_warmup)
        if self.pruner == "halving":
            return optuna.pruners.SuccessiveHalvingPruner()
        return optuna.pruners.NopPruner()


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
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy understands: show the scheme only
        return url.split(":", 1)[0] + ":..."


def open_storage(url: str | None, out: Path) -> tuple[Any, str]:
    """The study's storage (default: SQLite in ``out``) and its URL as shown to users."""
    optuna = _optuna()
    url = url or f"sqlite:///{(out / 'study.db').resolve()}"
    try:
        storage = _rdb_storage(optuna, url)
    except ImportError as e:
        missing = getattr(e.__cause__, "name", None) or "its database driver"
        raise MnistlabError(f"cannot open study storage {_redact(url)}: {missing} is not installed "
                            f"(for PostgreSQL: pip install 'mnistlab[scale]')") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy raises many kinds; all mean "cannot use this URL"
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MnistlabError(f"cannot open study storage {_redact(url)}: {reason}") from None
    return storage, _redact(url)


def _rdb_storage(optuna: Any, url: str, tries: int = 5) -> Any:
    """RDBStorage, retried when another driver is creating the same tables at this moment (their first
    start on an empty database: one of the two gets a duplicate-key error and finds the tables next time)."""
    import sqlalchemy.exc

    for attempt in range(tries):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=None if url.startswith("sqlite") else
                                              {"pool_pre_ping": True})
        except sqlalchemy.exc.IntegrityError:
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------- one trial


class PruningHook:
    """The ``on_epoch`` hook of a trial: report validation accuracy, stop the run when the pruner says so.

    In this process it wraps the live trial. On a Ray worker it is built from a picklable description and
    reaches the study through Optuna's gRPC storage proxy on the driver.
    """

    def __init__(self, trial: Any = None, *, proxy: tuple[str, int] | None = None, study_name: str = "",
                 trial_number: int = -1, options: SearchOptions | None = None) -> None:
        self.trial, self.proxy, self.study_name = trial, proxy, study_name
        self.trial_number, self.options = trial_number, options

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "trial": None}  # the live trial stays on the driver

    def _remote_trial(self) -> Any:
        optuna = _optuna()
        storage = optuna.storages.GrpcStorageProxy(host=self.proxy[0], port=self.proxy[1])
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=self.options.make_pruner())
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(self.study_name), self.trial_number)
        return optuna.trial.Trial(study, trial_id)

    def __call__(self, row: dict[str, Any]) -> None:
        if self.trial is None:
            self.trial = self._remote_trial()
        if row.get("val_acc") is None:
            return
        self.trial.report(row["val_acc"], row["epoch"])
        if self.trial.should_prune():
            raise StopRun(f"pruned at epoch {row['epoch']}")


def trial_config(base: config.Config, params: list[Param], stored: dict[str, Any], number: int) -> config.Config:
    """The base config with a trial's parameters set; named after the trial."""
    values = {p.key: p.decode(stored[p.key]) for p in params if p.key in stored}
    return checks.set_values(base, {**values, "name": f"{base.name}-trial{number:04d}"})


def _sample(study: Any, trial: Any, base: config.Config, params: list[Param], log: Log) -> config.Config | None:
    """The trial's config from the sampler's values; a combination the config rejects (e.g. nesterov
    without momentum) is recorded as a rejected trial (pruned) and gives None."""
    try:
        for p in params:
            p.suggest(trial)
        return trial_config(base, params, trial.params, trial.number)  # labels decoded back to values
    except ConfigError as e:
        trial.set_user_attr("outcome", f"rejected: {e}")
        study.tell(trial, state=_optuna().trial.TrialState.PRUNED)
        log(f"trial {trial.number}: rejected by the config ({e})")
        return None


def _run_here(cfg: config.Config, path: Path, dataset: data.Dataset, hook: PruningHook,
              tracker: Any = None) -> dict[str, Any]:
    start = time.perf_counter()
    outcome = "complete"
    try:
        run(cfg, path, overwrite=True, log=lambda msg: None, dataset=dataset, on_epoch=hook, tracker=tracker)
    except StopRun:
        outcome = "stopped"
    except DivergenceError:
        outcome = "diverged"
    return {"outcome": outcome, "seconds": time.perf_counter() - start,
            "node": {"hostname": socket.gethostname(), "device": RunDir(path).read_info()["environment"]["device"]}}


def _finish(study: Any, trial: Any, path: Path, result: dict[str, Any], log: Log) -> None:
    """Tell the study how a trial ended: its best validation accuracy, or pruned (also for divergence)."""
    optuna = _optuna()
    trial_number = trial.number
    history = RunDir(path).read_history()
    s = summarize(history) if history else {}
    for key, value in {"run_dir": str(path), "node": result["node"].get("hostname"),
                       "device": result["node"].get("device"), "epochs_run": len(history),
                       "seconds": round(result["seconds"], 1), "best_epoch": s.get("best_epoch"),
                       "outcome": result["outcome"]}.items():
        trial.set_user_attr(key, value)
    where = f"{len(history)} epochs, {result['seconds']:.0f} s on {result['node'].get('hostname')}"
    if result["outcome"] == "complete":
        study.tell(trial, s["best_val_acc"])
        log(f"trial {trial_number}: best validation accuracy {s['best_val_acc']:.3f}% at epoch {s['best_epoch']} "
            f"({where})")
    else:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        log(f"trial {trial_number}: {'pruned' if result['outcome'] == 'stopped' else 'diverged'} ({where})")


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


def _retry_later(study: Any, number: int, params: dict[str, Any], reason: str) -> None:
    """Mark an unfinished trial failed and queue its parameters again, so the next run redoes it."""
    optuna = _optuna()
    study.tell(number, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial(params, user_attrs={"retry_of": number, "retry_reason": reason})


def _recover(study: Any, tag: str, log: Log) -> None:
    """Trials this study directory left running when its driver was killed: failed, and queued again."""
    optuna = _optuna()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        if t.user_attrs.get("study_dir") == tag:
            log(f"trial {t.number} was left unfinished by an earlier run; its parameters are queued again")
            _retry_later(study, t.number, t.params, "its driver stopped")


# ---------------------------------------------------------------- the study


@dataclass
class TuneResult:
    study: Any
    out: Path
    best_toml: Path | None


def _identity(out: Path, base: config.Config, params: list[Param], options: SearchOptions, storage_shown: str,
              study_name: str) -> str:
    """Record what this study directory holds; refuse a directory that holds another study. Returns its tag."""
    record = {"study_name": study_name, "storage": storage_shown, "config": config.to_dict(base),
              "space": space_to_dict(params), "search": options.__dict__}
    path = out / STUDY_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise MnistlabError(f"{path} is corrupt; move it away or choose another --out") from None
        same = {k: old.get(k) for k in record} == json.loads(json.dumps(record))
        if not same:
            differs = next(k for k in record if old.get(k) != json.loads(json.dumps(record))[k])
            raise MnistlabError(f"{out} holds another study (its {differs} differs); choose another --out")
        return old["tag"]
    if any(out.iterdir()) and not set(p.name for p in out.iterdir()) <= {".mnistlab.lock", "study.db"}:
        raise MnistlabError(f"{out} is not empty and holds no study; choose another --out")
    tag = uuid.uuid4().hex
    atomic_write(path, json.dumps({**record, "tag": tag}, indent=1) + "\n")
    return tag


def tune(base: config.Config, params: list[Param], trials: int, out: Path, options: SearchOptions,
         storage_url: str | None = None, study_name: str | None = None, ray_options: Any = None,
         log: Log = print, tracker: Any = None) -> TuneResult:
    """Run (or resume) the search until the study holds ``trials`` finished trials; write its outputs."""
    optuna = _optuna()
    if trials < 1:
        raise ConfigError("--trials must be at least 1")
    if base.data.train_on_val:
        raise ConfigError("a search ranks trials on validation accuracy: data.train_on_val must be false")
    base = datasets.pin_dir(base)
    study_name = study_name or base.name
    storage, shown = open_storage(storage_url, out)
    tag = _identity(out, base, params, options, shown, study_name)
    try:
        study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True,
                                    direction="maximize", sampler=options.make_sampler(),
                                    pruner=options.make_pruner())
    except Exception as e:  # noqa: BLE001 - a database that refuses the study
        raise MnistlabError(f"cannot create or load study {study_name!r} in {shown}: {str(e).splitlines()[0]}") from None
    _recover(study, tag, log)
    dataset = datasets.load_config(base, log)
    trials_dir = out / "trials"
    trials_dir.mkdir(exist_ok=True)
    if ray_options is None:
        _search_here(study, base, params, trials, trials_dir, dataset, tag, log, tracker)
    else:
        _search_on_ray(study, storage, base, params, trials, trials_dir, dataset, tag, options, ray_options, log,
                       tracker)
    best = write_outputs(study, base, params, out)
    return TuneResult(study, out, best)


def _search_here(study: Any, base: config.Config, params: list[Param], trials: int, trials_dir: Path,
                 dataset: data.Dataset, tag: str, log: Log, tracker: Any = None) -> None:
    while (trial := _budget_trial(study, trials, tag)) is not None:
        cfg = _sample(study, trial, base, params, log)
        if cfg is None:
            continue
        path = trials_dir / f"trial{trial.number:04d}"
        try:
            result = _run_here(cfg, path, dataset, PruningHook(trial), tracker)
        except BaseException:
            _retry_later(study, trial.number, trial.params, "interrupted")
            raise
        _finish(study, trial, path, result, log)


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _serve_storage(storage: Any, host: str) -> tuple[str, int]:
    """Serve the study's storage to Ray workers with Optuna's gRPC proxy (a daemon thread of this driver)."""
    optuna = _optuna()
    port = _free_port(host)
    threading.Thread(target=optuna.storages.run_grpc_proxy_server, args=(storage,),
                     kwargs={"host": host, "port": port}, daemon=True, name="optuna-grpc-proxy").start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=1):
                return host, port
        except OSError:
            time.sleep(0.1)
    raise MnistlabError(f"could not start Optuna's storage proxy on {host}:{port}")


def _search_on_ray(study: Any, storage: Any, base: config.Config, params: list[Param], trials: int, trials_dir: Path,
                   dataset: data.Dataset, tag: str, options: SearchOptions, ray_options: Any, log: Log,
                   tracker: Any = None) -> None:
    from . import cluster

    with cluster.connect(ray_options.address) as ray:
        host = ray.util.get_node_ip_address()
        proxy = _serve_storage(storage, host)
        task = cluster.remote(cluster.train_in_tempdir, ray_options)
        data_ref = ray.put(dataset)
        resources = ray.cluster_resources()
        fits = int(resources.get("CPU", 1) // ray_options.cpus_per_run)
        if ray_options.gpus_per_run:
            fits = min(fits, int(resources.get("GPU", 0) // ray_options.gpus_per_run))
        parallel = max(1, fits)
        log(f"search on Ray: up to {parallel} trials at once, {ray_options.cpus_per_run:g} CPU + "
            f"{ray_options.gpus_per_run:g} GPU each; storage proxy at {proxy[0]}:{proxy[1]}")
        pending: dict[Any, Any] = {}  # Ray object ref -> the trial it runs
        spent = False
        try:
            while pending or not spent:
                while not spent and len(pending) < parallel:
                    trial = _budget_trial(study, trials, tag)
                    if trial is None:
                        spent = True
                        break
                    cfg = _sample(study, trial, base, params, log)
                    if cfg is None:
                        continue
                    hook = PruningHook(proxy=proxy, study_name=study.study_name, trial_number=trial.number,
                                       options=options)
                    ref = task.remote(config.to_dict(cfg), data_ref, ray_options.threads(), hook)
                    pending[ref] = trial
                if not pending:
                    break
                (ready,), _ = ray.wait(list(pending), num_returns=1)
                trial = pending.pop(ready)
                try:
                    result = cluster.task_result(ready, f"trial {trial.number}")
                except BaseException:
                    _retry_later(study, trial.number, trial.params, "its task failed")
                    raise
                path = trials_dir / f"trial{trial.number:04d}"
                cluster.write_run_dir(path, result["files"], result["node"])
                if tracker:
                    tracker.replay(f"trial {trial.number}", path)
                _finish(study, trial, path, result, log)
        except BaseException:
            for ref, trial in pending.items():
                ray.cancel(ref, force=True)
                _retry_later(study, trial.number, trial.params, "interrupted")
            raise


# ---------------------------------------------------------------- outputs


TRIAL_COLUMNS = ("number", "state", "best_val_acc", "epochs_run", "best_epoch", "node", "seconds")


def trial_records(study: Any, params: list[Param]) -> list[dict[str, Any]]:
    """One record per trial that ran or runs: parameters, best validation accuracy, epochs, state, node."""
    optuna = _optuna()
    S = optuna.trial.TrialState
    recs = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("over_budget"):  # never ran: another driver had the last place
            continue
        outcome = t.user_attrs.get("outcome", "")
        state = {S.COMPLETE: "complete", S.RUNNING: "running", S.WAITING: "waiting", S.FAIL: "failed"}.get(t.state)
        if t.state == S.PRUNED:
            state = "diverged" if outcome == "diverged" else "rejected" if outcome.startswith("rejected") else "pruned"
        vals = list(t.intermediate_values.values())
        rec: dict[str, Any] = {"number": t.number, "state": state,
                               "best_val_acc": round(t.value if t.value is not None else max(vals), 3) if (
                                   t.value is not None or vals) else None,
                               "epochs_run": t.user_attrs.get("epochs_run", len(vals)),
                               "best_epoch": t.user_attrs.get("best_epoch"), "node": t.user_attrs.get("node"),
                               "seconds": t.user_attrs.get("seconds")}
        for p in params:
            rec[p.key] = t.params.get(p.key)
        recs.append(rec)
    return recs


def _table_md(recs: list[dict[str, Any]], params: list[Param]) -> str:
    cols = ["number", "state", *[p.key for p in params], "best_val_acc", "epochs_run", "node", "seconds"]
    head = ["trial", "state", *[p.key for p in params], "best val acc %", "epochs", "node", "s"]

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in cols) + " |" for r in recs]
    return "\n".join(lines) + "\n"


def _save_figure(ax: Any, path: Path, title: str) -> None:
    fig = ax.get_figure() if hasattr(ax, "get_figure") else ax.flat[0].get_figure()
    fig.suptitle(title)
    fig.set_size_inches(8, 5)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write(path, buf.getvalue())
    import matplotlib.pyplot as plt
    plt.close(fig)


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
        cfg = config.set_values(cfg, {"name": f"{base.name}_tuned",
                                      "label": f"{base.label or base.name}, tuned (trial {best.number})"})
        best_path = out / "best.toml"
        atomic_write(best_path, f"# the best trial of study {study.study_name!r} by validation accuracy "
                                f"({best.value:.3f}%, trial {best.number})\n" + config.dumps(cfg))
        summary["best"] = {"number": best.number, "best_val_acc": best.value,
                           "params": {p.key: p.decode(best.params[p.key]) for p in params}}
        _save_figure(optuna.visualization.matplotlib.plot_optimization_history(study), out / "history.png",
                     "Validation accuracy of each trial (objective)")
        if len(complete) >= 2:
            try:
                with warnings.catch_warnings():  # few trials: PED-ANOVA warns that importances are equal
                    warnings.simplefilter("ignore", UserWarning)
                    ax = optuna.visualization.matplotlib.plot_param_importances(
                        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
                _save_figure(ax, out / "importance.png", "Parameter importances (PED-ANOVA)")
            except (ValueError, RuntimeError, ZeroDivisionError):
                pass  # too few distinct trials to rank parameters
    atomic_write(out / "trials.json", json.dumps(summary, indent=1) + "\n")
    return best_path
