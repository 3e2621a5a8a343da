"""Cost of one training step of several configs, measured side by side in one process.

    python benchmarks/step_cost.py experiments/speedrun.toml experiments/speedrun_fp32.toml \\
        "experiments/speedrun.toml:model.width=24,train.batch_size=256" [--steps 40] [--passes 7]

Each argument is a config file, optionally followed by ``:`` and comma-separated ``key=value`` overrides.
Every config gets a real :class:`mnistlab.core.train.Trainer` on the bundled MNIST; then, pass after pass, each
trains ``--steps`` steps in turn (interleaved, so a slow spell of a shared machine hits all of them), and
the lower quartile of its per-step times over the passes is reported, with the ratio to the first config
and the projected training time of the whole config (steps x per-step cost; the real run adds nothing but
the per-epoch shuffles). Use it to choose between candidates before training them to the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def lower_quartile(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=4)[0] if len(xs) >= 4 else min(xs)


def build(spec: str, dataset, threads: int):
    from mnistlab.core import checks, experiment

    path, _, sets = spec.partition(":")
    cfg = checks.load_config(path)
    overrides = [s for s in sets.split(",") if s]
    if threads:
        overrides.append(f"train.threads={threads}")
    cfg = checks.set_values(cfg, checks.parse_overrides([*overrides, "train.device=cpu"]))
    dataset, device, cfg = experiment.prepare(cfg, lambda *a: None, dataset)
    return cfg, experiment.make_trainer(cfg, dataset, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="+", help="CONFIG.toml[:key=value,...]")
    ap.add_argument("--steps", type=int, default=40, help="steps per config per pass")
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    from mnistlab.core import data, hardware

    dataset = data.load()
    trainers = {spec: build(spec, dataset, args.threads) for spec in args.configs}
    times: dict[str, list[float]] = {spec: [] for spec in trainers}
    g = torch.Generator().manual_seed(0)
    for p in range(args.passes + 1):  # pass 0 warms up (oneDNN primitive creation, first-touch allocations)
        for spec, (cfg, tr) in trainers.items():
            b = cfg.train.batch_size
            n = len(tr.train_idx)
            idx = [tr.train_idx[torch.randint(0, n, (b,), generator=g)] for _ in range(args.steps)]
            start = time.perf_counter()
            for i in idx:
                tr._step(i)
            tr.loss_sum.item()
            if p:
                times[spec].append((time.perf_counter() - start) / args.steps)
    first = lower_quartile(times[args.configs[0]])
    rows = []
    print(f"Machine: {hardware.summary()}\n")
    print("| config | precision | batch | steps | ms/step (lower quartile) | ratio to first | projected train s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for spec, (cfg, tr) in trainers.items():
        q = lower_quartile(times[spec])
        total = tr.total_steps
        rows.append(
            {
                "config": spec,
                "precision": cfg.train.precision,
                "batch": cfg.train.batch_size,
                "steps": total,
                "ms_per_step": round(q * 1e3, 3),
                "ratio": round(q / first, 3),
                "projected_train_s": round(q * total, 2),
                "all_ms": [round(t * 1e3, 3) for t in times[spec]],
            }
        )
        r = rows[-1]
        print(
            f"| `{spec}` | {r['precision']} | {r['batch']} | {total} | {r['ms_per_step']} | {r['ratio']} | "
            f"{r['projected_train_s']} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": hardware.describe(), "rows": rows}, indent=1) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
