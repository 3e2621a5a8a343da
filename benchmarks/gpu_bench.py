"""GPU timings: the report's run (30 epochs) and the speedrun on a CUDA device, each a fresh process.

* ``reproduce``: ``mnistlab reproduce`` in fp32 and bf16 (CUDA graphs on, the default) and the same fp32 run
  with ``train.cuda_graphs = false`` (eager) as the baseline beside it: process wall time, training time
  (sum of the epochs' training seconds; the first epoch includes the capture), final accuracies and the
  largest per-epoch validation gap to the report's table.
* ``speedrun``: ``experiments/speedrun.toml`` over 5 seeds: training seconds and test accuracy.

Writes ``OUT/gpu_bench.json`` and prints a Markdown table. Run: ``python benchmarks/gpu_bench.py --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
MNISTLAB = [sys.executable, "-m", "mnistlab"]


def run(cmd: list[str], out: Path) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"FAILED ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}", flush=True)
        return {"failed": proc.returncode}
    info = json.loads((out / "run.json").read_text())
    rows = json.loads((out / "metrics.json").read_text())
    res = {
        "wall_s": round(wall, 2),
        "train_s": info["train_seconds"],
        "epoch_s": [round(r["seconds"], 3) for r in rows],
        "final_test_acc": rows[-1]["test_acc"],
        "final_val_acc": rows[-1].get("val_acc"),
        "device": info["environment"].get("device"),
    }
    verdict = [line for line in proc.stdout.splitlines() if "the report" in line]
    if verdict:
        res["verdict"] = verdict[0]
    return res


def section_reproduce(tmp: Path, device: str, epochs: int) -> dict:
    from mnistlab.core.metrics import compare_with_report, report_table

    runs = {
        "fp32_graphs": ["reproduce"],
        "fp32_eager": ["train", "--config", "experiments/seed.toml", "--set", "train.cuda_graphs=false"],
        "bf16_graphs": ["reproduce", "--precision", "bf16"],
    }
    res = {}
    for name, args in runs.items():
        out = tmp / name
        res[name] = r = run(
            [*MNISTLAB, *args, "--device", device, "--epochs", str(epochs), "--quiet", "--out", str(out)], out
        )
        if "failed" not in r and epochs == 30:
            gap = compare_with_report(json.loads((out / "metrics.json").read_text()), report_table())
            r.update(max_val_gap=round(gap["max_val_acc_diff"], 3), max_loss_gap=gap["max_train_loss_diff"])
        print(f"[reproduce] {name}: {r}", flush=True)
    return res


def section_speedrun(tmp: Path, seeds: int, device: str, cfg: str = "experiments/speedrun.toml") -> dict:
    rows = []
    for seed in range(seeds):
        out = tmp / f"speedrun{seed}"
        r = run(
            [
                *MNISTLAB,
                "train",
                "--config",
                cfg,
                "--device",
                device,
                "--seed",
                str(seed),
                "--quiet",
                "--out",
                str(out),
            ],
            out,
        )
        r["seed"], r["config"] = seed, cfg
        rows.append(r)
        print(f"[speedrun] {r}", flush=True)
    ok = [r for r in rows if "failed" not in r]
    if not ok:
        return {"runs": rows}
    return {
        "runs": rows,
        "mean_train_s": round(statistics.mean(r["train_s"] for r in ok), 3),
        "mean_test_acc": round(statistics.mean(r["final_test_acc"] for r in ok), 3),
        "min_test_acc": min(r["final_test_acc"] for r in ok),
    }


def markdown(res: dict) -> str:
    lines = [
        f"GPU: {res['gpu']}; torch {res['torch']}; {res['date']}.",
        "",
        *([f"Machine: {res['machine']}.", ""] if "machine" in res else []),
        "| run (30 epochs, report config) | process wall s | training s | per-epoch s (2nd-last) | "
        "final test % | max val gap to report |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in res.get("reproduce", {}).items():
        if "failed" in r:
            lines.append(f"| {name} | failed ({r['failed']}) | | | | |")
            continue
        lines.append(
            f"| {name} | {r['wall_s']} | {r['train_s']} | {statistics.median(r['epoch_s'][1:] or r['epoch_s'])} | "
            f"{r['final_test_acc']:.2f} | {r.get('max_val_gap', float('nan')):.3f} |"
        )
    s = res.get("speedrun")
    if s and "mean_train_s" in s:
        lines += [
            "",
            f"Speedrun (`{s['runs'][0]['config']}`, {len(s['runs'])} seeds): mean training time "
            f"{s['mean_train_s']} s (capture included), mean test accuracy {s['mean_test_acc']}% "
            f"(min {s['min_test_acc']}%).",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--sections", default="reproduce,speedrun")
    parser.add_argument("--device", default="cuda", help="cpu only to try this script without a GPU")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--speedrun-config", default="experiments/speedrun.toml")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: no CUDA device")
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "none (CPU dry run)"
    from mnistlab.core import hardware

    desc = hardware.describe(args.device)
    res: dict = {
        "gpu": gpu,
        "torch": torch.__version__,
        "machine": hardware.summary(desc),
        "hardware": desc,
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if "reproduce" in args.sections:
            res["reproduce"] = section_reproduce(Path(tmp), args.device, args.epochs)
        if "speedrun" in args.sections:
            res["speedrun"] = section_speedrun(Path(tmp), args.seeds, args.device, args.speedrun_config)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_bench.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (args.out / "gpu_bench.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
