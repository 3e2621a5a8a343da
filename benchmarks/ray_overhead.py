"""Ray's overhead per run against the sequential study, on tiny runs, in one invocation.

    unshare -n sh -c 'ip link set lo up && python benchmarks/ray_overhead.py'   # loopback only (root)

Same study three ways, in this process: sequential (`mnistlab compare`), then on an embedded local Ray with
one run at a time (`--cpus-per-run` = all CPUs) and with one run per CPU. Each run is tiny (2,000 training
images, a 784-16-10 MLP, 2 epochs, 1 thread), so what is left is the cost of a task: shipping the config,
starting a worker, sending the run's files back and writing them. Ray's own start-up is timed apart.
Writes benchmarks/results/ray_overhead.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import write_mnist_dir  # noqa: E402 - tests/ goes on sys.path first
from mnistlab.core import checks, config, data, hardware  # noqa: E402 - Ray's telemetry is off first
from mnistlab.studies.compare import run_study, run_study_ray  # noqa: E402 - Ray's telemetry is off first
from mnistlab.studies.ray_executor import RayOptions  # noqa: E402 - Ray's telemetry is off first


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=12)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    cpus = os.cpu_count() or 1
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_dir = write_mnist_dir(tmp / "data", data.load(), 2000, 500)
        cfg = checks.set_values(
            config.Config(name="tiny"),
            {"data.dir": str(data_dir), "model.hidden": [16], "train.epochs": 2, "train.threads": 1},
        )
        quiet = lambda msg: None
        t = time.perf_counter()
        run_study([cfg], args.runs, tmp / "seq", log=quiet)
        seq = time.perf_counter() - t

        t = time.perf_counter()
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        startup = time.perf_counter() - t
        t = time.perf_counter()
        run_study_ray([cfg], args.runs, tmp / "ray1", RayOptions(cpus_per_run=float(cpus)), log=quiet)
        one_at_a_time = time.perf_counter() - t
        t = time.perf_counter()
        run_study_ray([cfg], args.runs, tmp / "rayN", RayOptions(cpus_per_run=1.0), log=quiet)
        concurrent = time.perf_counter() - t
        ray.shutdown()

    result = {
        "runs": args.runs,
        "cpus": cpus,
        "machine": hardware.summary(),
        "hardware": hardware.describe(),
        "sequential_s": round(seq, 2),
        "ray_startup_s": round(startup, 2),
        "ray_one_at_a_time_s": round(one_at_a_time, 2),
        "ray_one_per_cpu_s": round(concurrent, 2),
        "overhead_per_run_s": round((one_at_a_time - seq) / args.runs, 3),
        "ratio_one_at_a_time": round(one_at_a_time / seq, 2),
        "ratio_one_per_cpu": round(concurrent / seq, 2),
        "command": "unshare -n sh -c 'ip link set lo up && python benchmarks/ray_overhead.py'",
    }
    md = (
        f"# Ray overhead per run ({args.runs} tiny runs)\n\nMachine: {result['machine']}.\n\n"
        f"Command: `{result['command']}` (one invocation; times exclude Ray's start-up, "
        f"{startup:.1f} s, measured apart).\n\n"
        "| mode | wall s | vs sequential |\n| --- | ---: | ---: |\n"
        f"| sequential (`mnistlab compare`) | {seq:.2f} | 1.00 |\n"
        f"| Ray, one run at a time (`--cpus-per-run {cpus}`) | {one_at_a_time:.2f} | "
        f"{result['ratio_one_at_a_time']:.2f} |\n"
        f"| Ray, one run per CPU (`--cpus-per-run 1`) | {concurrent:.2f} | {result['ratio_one_per_cpu']:.2f} |\n\n"
        f"Overhead per run, one at a time: {result['overhead_per_run_s']:.3f} s.\n"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray_overhead.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "ray_overhead.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
