"""A baseline table across the MNIST family: the same four recipes on each dataset, 3 seeds each.

    python benchmarks/family_baselines.py [--datasets mnist,fashion-mnist,kmnist,qmnist,emnist-balanced,...]
        [--configs seed,mlp_best,cnn_best,speedrun] [--seeds 3] [--out runs/family] [--threads N] [--epochs N]

For each dataset whose data can be had (bundled, installed, cached or fetched), `mnistlab compare` runs the
report's MLP (experiments/seed.toml), the best MLP without augmentation (mlp_best.toml), the best CNN
(cnn_best.toml) and the CPU speed recipe (speedrun.toml, here with a validation split so that it is read
like the others) over the seeds; every run is read at its best-validation epoch, and the table gives the
test accuracy there, mean ± std. The recipes are MNIST's, not re-tuned per dataset. A dataset whose data
cannot be had is listed with the reason, never replaced by another. Where QMNIST is available, the MNIST
runs of each recipe are also evaluated on QMNIST's test10k (its reconstruction of MNIST's test set) and
test50k (the 50,000 lost MNIST test digits). Studies resume: run the same command again after a stop.

Writes OUT/DATASET/... (the studies), docs/results/family/baselines.md and .json (the table, with the
command line and the machine). `--epochs N` overrides every recipe's epochs: for a smoke test only.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mnistlab.cli import main as mnistlab  # noqa: E402 - the checkout's src goes on sys.path first
from mnistlab.core import datasets, hardware  # noqa: E402 - the checkout's src goes on sys.path first
from mnistlab.core.runs import study_run_dir  # noqa: E402 - the checkout's src goes on sys.path first
from mnistlab.errors import MnistlabError  # noqa: E402 - the checkout's src goes on sys.path first

RECIPES = {  # name -> (config file, extra overrides)
    "seed": ("experiments/seed.toml", []),
    "mlp_best": ("experiments/mlp_best.toml", []),
    "cnn_best": ("experiments/cnn_best.toml", []),
    "speedrun": ("experiments/speedrun.toml", ["--set", "data.train_on_val=false"]),
    # the speed recipe docs/family.md's table was measured with (issue 23's first; since replaced)
    "speedrun_3epochs": ("experiments/speedrun_3epochs.toml", ["--set", "data.train_on_val=false"]),
}
# published results, for orientation only (not measured here)
PUBLISHED = {
    "fashion-mnist": "MLPs about 88-89%, small CNNs 91-94% (Fashion-MNIST's benchmark)",
    "kmnist": "4-nearest neighbours 91.56%, a small CNN 95.12%, PreActResNet-18 97.82-98.83% (KMNIST's README)",
    "qmnist": "LeNet-5 trained on MNIST: 0.81% error on test10k, 1.08% on test50k (QMNIST's README)",
}


def _available(name: str) -> str | None:
    """None when the dataset's data can be had here (loading it once, which fetches it), else why not."""
    try:
        datasets.load(name, log=print)
        return None
    except MnistlabError as e:
        return str(e)


def _study(name: str, recipe: str, args: argparse.Namespace) -> Path:
    config, extra = RECIPES[recipe]
    out = args.out / name / recipe
    cmd = [
        "compare",
        str(ROOT / config),
        "--seeds",
        str(args.seeds),
        "--dataset",
        name,
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    print("mnistlab", " ".join(cmd), flush=True)
    if mnistlab(cmd) != 0:
        raise SystemExit(f"the study {out} failed")
    return out


def _qmnist(study: Path, split: str, out: Path) -> float | None:
    """Mean test accuracy of a study's MNIST runs on QMNIST's ``split``."""
    doc = json.loads((study / "compare.json").read_text())
    accs = []
    for row in doc["rows"]:
        for run in doc["runs"][row["name"]]:
            ev = out / f"{row['name']}-seed{run['seed']}-{split}"
            if (
                mnistlab(
                    [
                        "evaluate",
                        str(study_run_dir(study, row["name"], run["seed"])),
                        "--dataset",
                        "qmnist",
                        "--split",
                        split,
                        "--out",
                        str(ev),
                    ]
                )
                != 0
            ):
                return None
            (summary,) = [json.loads(p.read_text()) for p in ev.glob("*/summary.json")]
            accs.append(summary["accuracy"])
    return sum(accs) / len(accs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="mnist,fashion-mnist,kmnist,qmnist,emnist-balanced,emnist-letters")
    ap.add_argument("--configs", default=",".join(RECIPES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/family"))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=0, help="override every recipe's epochs (smoke tests only)")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "results" / "family")
    args = ap.parse_args()
    names, recipes = args.datasets.split(","), args.configs.split(",")
    rows, missing, qmnist = [], {}, {}
    for name in names:
        reason = _available(name)
        if reason is not None:
            missing[name] = reason
            print(f"{name}: not available here ({reason})", flush=True)
            continue
        for recipe in recipes:
            study = _study(name, recipe, args)
            doc = json.loads((study / "compare.json").read_text())
            rows += [{"dataset": name, "recipe": recipe, **r} for r in doc["rows"]]
            if name == "mnist" and "qmnist" in names and _available("qmnist") is None:
                qmnist[recipe] = {
                    s: _qmnist(study, s, args.out / "qmnist-eval" / recipe) for s in ("test10k", "test50k")
                }
    table = [
        "| dataset | recipe | seeds | test acc % at best-val epoch (mean ± std) | best epoch | epochs | parameters |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        table.append(
            f"| {r['dataset']} | {r['config']} | {r['seeds']} | {r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f} "
            f"| {r['best_epoch_mean']} | {r['epochs']} | {r['parameters']:,} |"
        )
    lines = [
        "# Baselines across the MNIST family",
        "",
        "```sh",
        "python " + " ".join([str(Path(sys.argv[0]).as_posix()), *sys.argv[1:]]),
        "```",
        "",
        f"Machine: {hardware.summary()}; {torch.get_num_threads()} torch threads, Python {platform.python_version()}.",
        "",
        *table,
        "",
    ]
    if qmnist:
        lines += [
            "MNIST runs on QMNIST's test sets (mean over seeds):",
            "",
            "| recipe | QMNIST test10k % | QMNIST test50k % |",
            "| --- | ---: | ---: |",
        ]
        lines += [f"| {k} | {v['test10k']:.2f} | {v['test50k']:.2f} |" for k, v in qmnist.items()] + [""]
    for name, reason in missing.items():
        lines.append(f"- **{name}: not measured** — its data could not be had here: {reason}")
    lines += ["", "Published results, for orientation (not measured here):", ""]
    lines += [f"- {k}: {v}" for k, v in PUBLISHED.items()]
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "baselines.md").write_text("\n".join(lines) + "\n")
    (args.results / "baselines.json").write_text(
        json.dumps({"rows": rows, "qmnist": qmnist, "missing": missing, "argv": sys.argv}, indent=1) + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
