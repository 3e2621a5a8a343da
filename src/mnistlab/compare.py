"""Studies: several configs x several seeds, a comparison table, an overlay figure and ensembles.

Model selection uses validation only: each run is read at its best-validation epoch, and the test
accuracy reported is the one at that epoch. Runs already complete are skipped and interrupted ones
resumed, so a study that was stopped picks up where it was.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import checkpoint, config, data
from .errors import MnistlabError
from .experiment import resume, run, summarize
from .metrics import predict_proba
from .plots import overlay_figure
from .runs import RunDir, atomic_write

Log = Callable[[str], None]


@dataclass
class StudyRow:
    label: str
    name: str
    runs: list[dict[str, Any]]  # one summary per finished seed
    parameters: int
    ensemble_test_acc: float | None = None

    def stat(self, key: str) -> tuple[float, float]:
        values = [r[key] for r in self.runs if r.get(key) is not None]
        if not values:
            return math.nan, math.nan
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def load_configs(paths: Sequence[str | Path]) -> list[config.Config]:
    """Load the study's configs; they must agree on the dataset and have distinct names."""
    cfgs = [config.load(p) for p in paths]
    names = [c.name for c in cfgs]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise MnistlabError(f"configs in a study need distinct names; repeated: {', '.join(sorted(dup))}")
    first = cfgs[0]
    for path, c in zip(paths, cfgs):
        if (c.data.dir, c.data.val_fraction) != (first.data.dir, first.data.val_fraction):
            raise MnistlabError(f"{path} uses another dataset or split (data.dir={c.data.dir!r}, "
                                f"val_fraction={c.data.val_fraction}) than {paths[0]}: a comparison needs the same data")
    return cfgs


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """A config without what does not define the experiment: its table label and thread count. Keys added
    to mnistlab after a run was made take their defaults, so older runs still compare."""
    cfg = config.to_dict(config.from_dict(cfg))
    return {**cfg, "label": "", "train": {**cfg["train"], "threads": 0}}


def _run_summary(run_dir: RunDir) -> dict[str, Any]:
    """One finished run, read at its best-validation epoch (its last epoch when it has no validation set)."""
    info, history = run_dir.read_info(), run_dir.read_history()
    s = summarize(history)
    env = info.get("environment", {})
    return {"seed": info["config"]["train"]["seed"], "epochs": len(history), "parameters": info.get("parameters"),
            "device": env.get("cuda_device") if env.get("device") == "cuda" else env.get("device"),
            "train_seconds": info.get("train_seconds"), "final_test_acc": s["final_test_acc"],
            "best_epoch": s.get("best_epoch", len(history)), "best_val_acc": s.get("best_val_acc"),
            "test_acc": s.get("test_acc_at_best_val", s["final_test_acc"])}


def run_study(cfgs: list[config.Config], seeds: int, out: Path, log: Log = print,
              show_progress: bool = False) -> list[StudyRow]:
    """Train each config for ``seeds`` seeds (train.seed, train.seed + 1, ...) under ``out/NAME/seedS``."""
    rows = []
    for cfg in cfgs:
        summaries = []
        for i in range(seeds):
            seed = cfg.train.seed + i
            seeded = config.apply_overrides(cfg, [f"train.seed={seed}"])
            run_dir = RunDir(out / cfg.name / f"seed{seed}")
            info = run_dir.read_info() if run_dir.file("run.json").is_file() else {}
            status = info.get("status")
            if status is not None and _comparable(info["config"]) != _comparable(config.to_dict(seeded)):
                raise MnistlabError(f"{run_dir.path} holds a run of a different {cfg.name} config; "
                                    f"delete it or choose another --out")
            if status == "complete":
                log(f"{cfg.name} seed {seed}: complete, skipped")
            elif status in ("interrupted", "running") and run_dir.file("checkpoint.json").is_file():
                log(f"{cfg.name} seed {seed}: resuming")
                resume(run_dir.path, log=log, show_progress=show_progress)
            else:
                log(f"{cfg.name} seed {seed}: training")
                run(seeded, run_dir.path, overwrite=status is not None, log=log, show_progress=show_progress)
            summaries.append(_run_summary(run_dir))
        rows.append(StudyRow(cfg.label or cfg.name, cfg.name, summaries, summaries[0]["parameters"]))
    return rows


@torch.inference_mode()
def ensemble_test_accuracy(run_dirs: Sequence[str | Path], device: str = "cpu") -> float:
    """Test accuracy (%) of the mean softmax of several runs' best-validation models."""
    probs, labels, source = None, None, None
    for path in run_dirs:
        model, cfg = checkpoint.load_model(path, device)
        if source is None:
            ds = data.load(cfg.data.dir or None)
            x, labels, source = data.to_float(ds.test_images).to(device), ds.test_labels.to(device), cfg.data.dir
        elif cfg.data.dir != source:
            raise MnistlabError(f"{path} was trained on other data ({cfg.data.dir!r}): an ensemble needs one test set")
        p = predict_proba(model, x, 2000)
        probs = p if probs is None else probs + p
    return 100.0 * (probs.argmax(1) == labels).float().mean().item()


def add_ensembles(rows: list[StudyRow], out: Path, device: str = "cpu") -> None:
    for row in rows:
        if len(row.runs) > 1:
            row.ensemble_test_acc = ensemble_test_accuracy(
                [out / row.name / f"seed{r['seed']}" for r in row.runs], device)


def _pm(mean: float, std: float, digits: int = 2) -> str:
    return "-" if math.isnan(mean) else f"{mean:.{digits}f} ± {std:.{digits}f}"


TABLE_COLUMNS = ("config", "name", "seeds", "test_acc_mean", "test_acc_std", "best_val_acc_mean", "best_epoch_mean",
                 "epochs", "parameters", "train_seconds_per_run", "ran_on", "ensemble_test_acc")


def table_records(rows: list[StudyRow]) -> list[dict[str, Any]]:
    recs = []
    for r in rows:
        t, v = r.stat("test_acc"), r.stat("best_val_acc")
        recs.append({"config": r.label, "name": r.name, "seeds": len(r.runs), "test_acc_mean": round(t[0], 3),
                     "test_acc_std": round(t[1], 3), "best_val_acc_mean": None if math.isnan(v[0]) else round(v[0], 3),
                     "best_epoch_mean": round(r.stat("best_epoch")[0], 1), "epochs": round(r.stat("epochs")[0], 1),
                     "parameters": r.parameters, "train_seconds_per_run": round(r.stat("train_seconds")[0], 1),
                     "ran_on": _ran_on(r),
                     "ensemble_test_acc": None if r.ensemble_test_acc is None else round(r.ensemble_test_acc, 3)})
    return recs


def _ran_on(row: StudyRow) -> str:
    """The devices a row's runs trained on, e.g. "cpu" or "NVIDIA H200"."""
    return ", ".join(sorted({str(r.get("device") or "?") for r in row.runs}))


def markdown_table(rows: list[StudyRow]) -> str:
    lines = ["| config | seeds | test acc % at best-val epoch (mean ± std) | best val acc % | best epoch | epochs "
             "| parameters | train s/run | ran on | ensemble test acc % |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        ens = "-" if r.ensemble_test_acc is None else f"{r.ensemble_test_acc:.2f}"
        lines.append(f"| {r.label} | {len(r.runs)} | {_pm(*r.stat('test_acc'))} | {_pm(*r.stat('best_val_acc'))} | "
                     f"{r.stat('best_epoch')[0]:.1f} | {r.stat('epochs')[0]:.0f} | {r.parameters:,} | "
                     f"{r.stat('train_seconds')[0]:.0f} | {_ran_on(r)} | {ens} |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[StudyRow], out: Path) -> None:
    """compare.md, compare.csv, compare.json and curves.png (validation accuracy per epoch, all configs)."""
    recs = table_records(rows)
    atomic_write(out / "compare.md", markdown_table(rows))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in rec.items()} for rec in recs)
    atomic_write(out / "compare.csv", buf.getvalue())
    atomic_write(out / "compare.json", json.dumps({"rows": recs, "runs": {r.name: r.runs for r in rows}}, indent=1))
    curves = {}
    for r in rows:
        hist = [RunDir(out / r.name / f"seed{s['seed']}").read_history() for s in r.runs]
        if all(h and h[0].get("val_acc") is not None for h in hist):
            curves[r.label] = [[row["val_acc"] for row in h] for h in hist]
    if curves:
        overlay_figure(curves, out / "curves.png", title="Validation accuracy per epoch (mean over seeds, min-max band)")
