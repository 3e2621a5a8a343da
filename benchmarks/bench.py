"""mnistlab's speed benchmark: one invocation, every figure measured against a baseline run beside it.

Sections (``--sections``, default all):

* ``reproduce``: the report's script (benchmarks/report_pipeline.py: DataLoader with per-sample
  PIL -> tensor conversion) vs ``mnistlab reproduce`` in fp32 and bf16, each a fresh process, end to end
  (imports, data, 30 epochs with validation and test every epoch, files and figures). Wall times, ratios,
  peak resident memory and final accuracies.
* ``roofline``: achieved GFLOP/s of the training step (autograd and fused) against this machine's
  measured matrix-multiply peak for large square matrices, in fp32 and bf16.
* ``speedrun``: ``experiments/speedrun.toml`` beside ``experiments/speedrun_fastcnn.toml`` (issue 13's recipe;
  ``--recipes`` also takes ``first``, issue 23's first recipe, ``speedrun_3epochs.toml``, and ``baseline``,
  the recipe before issue 13's), 10 seeds each (200-209), in turn: training seconds, process wall time and
  test accuracy, and whether the target holds (<= 4 s, 99% mean, min 98.9%).

Every section records the machine it ran on (``mnistlab.core.hardware``: CPU model, the flags that decide speed,
torch's build). Writes ``benchmarks/results/bench_KIND.json`` and ``.md``, one file per kind of CPU (amx,
avx512_bf16, avx512, avx2), since the figures differ by kind; a section not rerun keeps its last results.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import peak_rss  # noqa: E402 - benchmarks/ goes on sys.path first


def timed_process(cmd: list[str]) -> dict:
    """Run ``cmd``: wall seconds and peak RSS (MiB) of that process alone (through benchmarks/peak_rss.py:
    a child forked from this driver would count the driver's memory as its own peak)."""
    wall, peak, proc = peak_rss.measure(cmd, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mib": peak, "output": proc.stdout}


def section_reproduce(epochs: int, device: str) -> dict:
    res: dict = {"epochs": epochs}
    dev = ["--device", device]
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "report_script": [
                sys.executable,
                "benchmarks/report_pipeline.py",
                "--epochs",
                str(epochs),
                "--json",
                f"{tmp}/report.json",
            ],
            "mnistlab_fp32": [
                sys.executable,
                "-m",
                "mnistlab",
                "reproduce",
                "--quiet",
                "--epochs",
                str(epochs),
                "--out",
                f"{tmp}/fp32",
                *dev,
            ],
            "mnistlab_bf16": [
                sys.executable,
                "-m",
                "mnistlab",
                "reproduce",
                "--quiet",
                "--epochs",
                str(epochs),
                "--precision",
                "bf16",
                "--out",
                f"{tmp}/bf16",
                *dev,
            ],
        }
        for name, cmd in runs.items():
            print(f"[reproduce] {name} ...", flush=True)
            r = timed_process(cmd)
            if name == "report_script":
                rows = json.loads(Path(f"{tmp}/report.json").read_text())
            else:
                run_dir = Path(tmp) / name.split("_")[1]
                rows = json.loads((run_dir / "metrics.json").read_text())
                # what it trained in: bf16 falls back to fp32 where it is not native
                r["precision"] = json.loads((run_dir / "run.json").read_text())["config"]["train"]["precision"]
            r.update(final_val_acc=rows[-1]["val_acc"], final_test_acc=rows[-1]["test_acc"])
            r.pop("output")
            res[name] = r
            print(f"  {r}", flush=True)
    base = res["report_script"]["wall_s"]
    for name in ("mnistlab_fp32", "mnistlab_bf16"):
        res[name]["speedup_vs_report"] = round(base / res[name]["wall_s"], 2)
    return res


def _seconds(fns: dict, reps: int, passes: int = 5) -> dict[str, float]:
    """Seconds per call of each function: ``passes`` rounds, the functions taking turns within each (so a
    slow spell of a shared machine hits all of them), the lower quartile of the rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()  # warm-up: oneDNN/MKL kernel selection, first-touch allocations
    for _ in range(passes):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(reps):
                fn()
            times[name].append((time.perf_counter() - start) / reps)
    return {name: statistics.quantiles(t, n=4)[0] if len(t) >= 4 else min(t) for name, t in times.items()}


def section_roofline() -> dict:
    """The report's training step (B = 100) against the machine's matrix-multiply peak, and against the same
    step's matrix multiplies alone (the fused step's floor: what is left above it is elementwise work and
    per-operator dispatch)."""
    from mnistlab.core import config, data, fused
    from mnistlab.core.train import Trainer

    res = {}
    n = 2048
    mats = {name: torch.rand(n, n).to(dtype) for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16"))}
    peak = _seconds({name: (lambda a=a: a @ a) for name, a in mats.items()}, 5)
    for name, t in peak.items():
        res[f"peak_matmul_gflops_{name}"] = round(2 * n**3 / t / 1e9, 1)
    # FLOPs of one step of the report's MLP (B = 100): forward, weight gradients, hidden-layer gradient
    b, dims = 100, [(784, 1024), (1024, 10)]
    flops = sum(2 * b * i * o for i, o in dims) * 2 + 2 * b * 1024 * 10
    trainer = Trainer(config.Config(), data.load(), torch.device("cpu"))
    x, y = trainer.train_split.x[:b], trainer.train_split.y[:b]
    # the fused step's matrix multiplies alone, same shapes, layouts and in-place updates
    w1, b1, w2, b2 = (p.detach().clone() for p in trainer.model.parameters())
    a, g = x.flatten(1).clone(), torch.rand(b, 10)
    h, z, gh = torch.empty(b, 1024), torch.empty(10, b), torch.empty(b, 1024)

    def gemms() -> None:
        torch.addmm(b1, a, w1.t(), out=h)  # hidden layer
        torch.addmm(b2[:, None], w2, h.t(), out=z)  # output layer, as (W @ A^T)
        torch.mm(g, w2, out=gh)  # gradient of the hidden layer
        w2.addmm_(g.t(), h, alpha=-1e-9)  # the updates are the weight-gradient GEMMs
        w1.addmm_(gh.t(), a, alpha=-1e-9)

    def autograd() -> None:  # the plain autograd step the fused one replaces
        loss = torch.nn.functional.cross_entropy(trainer.model(x), y)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()

    steps = {
        "autograd_fp32": autograd,
        "fused_fp32": functools.partial(fused.FusedMLPStep(trainer.model, trainer.optimizer, "fp32"), x, y),
        "fused_bf16": functools.partial(fused.FusedMLPStep(trainer.model, trainer.optimizer, "bf16"), x, y),
        "gemms_only_fp32": gemms,
    }
    for name, t in _seconds(steps, 100).items():
        g_s = flops / t / 1e9
        res[f"step_{name}"] = {
            "gflops": round(g_s, 1),
            "fraction_of_peak": round(g_s / res[f"peak_matmul_gflops_{name[-4:]}"], 3),
            "ms_per_step": round(t * 1e3, 3),
        }
    res["step_flops"] = flops
    return res


SECTIONS = ("reproduce", "roofline", "speedrun")
SPEEDRUN_CONFIGS = {
    "speedrun": "experiments/speedrun.toml",  # the recipe (issue 23): speedcnn, batch 192, 2 epochs, precision auto
    "first": "experiments/speedrun_3epochs.toml",  # issue 23's first recipe: batch 256, 3 epochs (4.6-4.7 s on avx512)
    "previous": "experiments/speedrun_fastcnn.toml",  # issue 13's recipe: fastcnn width 32, bf16
    "baseline": "experiments/speedrun_baseline.toml",  # the recipe before issue 13: small VGG-style CNN
}
# the timed seeds are 200, 201, ...: none of them chose the recipe (validation used 1-3; seeds 100-109 tested
# the first, 2-epoch choice, and its miss there led to the validation floor: docs/speed.md)
FINAL_SEEDS = 200
TARGET_S, TARGET_MEAN, TARGET_MIN = 4.0, 99.0, 98.9  # issue 23: <= 4 s of training, 99% mean, min >= 98.9%


def _summary(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 3),
        "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0,
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def section_speedrun(seeds: int, device: str, recipes: list[str]) -> dict:
    """The speed recipe beside the ones before it, seed by seed in turn (so a slow spell hits all), each a
    fresh `mnistlab train` process: training seconds (what the run records: every training step; not
    process start, imports, data loading or evaluation), process wall time, test accuracy, precision used."""
    rows: dict[str, list[dict]] = {name: [] for name in recipes}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(FINAL_SEEDS, FINAL_SEEDS + seeds):
            for name in recipes:
                out = f"{tmp}/{name}{seed}"
                r = timed_process(
                    [
                        sys.executable,
                        "-m",
                        "mnistlab",
                        "train",
                        "--config",
                        SPEEDRUN_CONFIGS[name],
                        "--seed",
                        str(seed),
                        "--quiet",
                        "--out",
                        out,
                        "--device",
                        device,
                    ]
                )
                info = json.loads(Path(out, "run.json").read_text())
                rows[name].append(
                    {
                        "seed": seed,
                        "train_s": info["train_seconds"],
                        "wall_s": r["wall_s"],
                        "test_acc": info["summary"]["final_test_acc"],
                        "precision": info["config"]["train"]["precision"],
                    }
                )
                print(f"[speedrun] {name} {rows[name][-1]}", flush=True)
    res: dict = {
        name: {
            "config": SPEEDRUN_CONFIGS[name],
            "runs": r,
            "train_s": _summary([x["train_s"] for x in r]),
            "wall_s": _summary([x["wall_s"] for x in r]),
            "test_acc": _summary([x["test_acc"] for x in r]),
            "precision": sorted({x["precision"] for x in r}),
        }
        for name, r in rows.items()
    }
    if "speedrun" in res:
        s = res["speedrun"]
        res["speedup_train_s"] = {
            name: round(res[name]["train_s"]["mean"] / s["train_s"]["mean"], 2)
            for name in recipes
            if name != "speedrun"
        }
        res["target_met"] = bool(
            s["train_s"]["mean"] <= TARGET_S
            and s["test_acc"]["mean"] >= TARGET_MEAN
            and s["test_acc"]["min"] >= TARGET_MIN
        )
    return res


def _measured_on(r: dict) -> list[str]:
    """The line that names where and when a section was measured (every section carries its own)."""
    command = f"Command: `{r['command']}`. " if r.get("command") else ""
    return [f"{command}Measured on: {r['machine']}; mnistlab on {r['device']}; {r['date']}.", ""]


def markdown(res: dict) -> str:
    lines = [
        f"# mnistlab speed benchmark on a CPU of kind: {res['kind_label']}",
        "",
        "Command: `python benchmarks/bench.py` (sections: reproduce, roofline, speedrun); each section names "
        "its own command, machine and date.",
        "",
        *([f"**Note:** {res['note']}", ""] if res.get("note") else []),
    ]
    if "reproduce" in res:
        r = res["reproduce"]
        lines += [
            "## The report's experiment, end to end",
            "",
            *_measured_on(r),
            f"| run ({r.get('epochs', 30)} epochs, report config) | wall s | speed-up | peak RSS MiB | final val % | "
            "final test % |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, label in (
            ("report_script", "report's script (per-sample DataLoader)"),
            ("mnistlab_fp32", "`mnistlab reproduce` fp32"),
            ("mnistlab_bf16", "`mnistlab reproduce --precision bf16`"),
        ):
            x = r[name]
            if name == "mnistlab_bf16" and x.get("precision") == "fp32":
                label += " (trained in fp32: no native bf16 here)"
            lines.append(
                f"| {label} | {x['wall_s']} | {x.get('speedup_vs_report', 1.0)}x | {x['peak_rss_mib']} | "
                f"{x['final_val_acc']:.2f} | {x['final_test_acc']:.2f} |"
            )
        lines.append("")
    if "roofline" in res:
        r = res["roofline"]
        lines += [
            "## Training step against the matrix-multiply peak",
            "",
            *_measured_on(r),
            f"Matmul peak (2048x2048): fp32 {r['peak_matmul_gflops_fp32']} GFLOP/s, "
            f"bf16 {r['peak_matmul_gflops_bf16']} GFLOP/s.",
            "",
            "| training step (B=100) | ms/step | GFLOP/s | fraction of peak |",
            "| --- | ---: | ---: | ---: |",
        ]
        for name in ("autograd_fp32", "fused_fp32", "fused_bf16", "gemms_only_fp32"):
            if f"step_{name}" not in r:
                continue
            x = r[f"step_{name}"]
            lines.append(f"| {name} | {x['ms_per_step']} | {x['gflops']} | {x['fraction_of_peak']:.0%} |")
        lines.append("")
    if "speedrun" in res:
        r = res["speedrun"]
        names = [n for n in SPEEDRUN_CONFIGS if n in r]
        n = len(r[names[0]]["runs"])
        lines += [
            "## Speed recipes",
            "",
            *_measured_on(r),
            f"{n} seeds each ({r[names[0]]['runs'][0]['seed']}, ...: not "
            "the seeds that chose the recipe), in turn. Training time: every training step; not process start, "
            "imports, data loading or evaluation, which the wall column includes.",
            "",
            "| recipe | precision | train s (mean ± std) | process wall s (mean) | test acc % (mean ± std) | "
            "min test acc % |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        for name in names:
            x = r[name]
            lines.append(
                f"| `{x['config']}` | {'/'.join(x.get('precision', ['?']))} | {x['train_s']['mean']:.2f} ± "
                f"{x['train_s']['std']:.2f} | {x['wall_s']['mean']:.2f} | {x['test_acc']['mean']:.3f} ± "
                f"{x['test_acc']['std']:.3f} | {x['test_acc']['min']:.2f} |"
            )
        speedup = r.get("speedup_train_s")
        if isinstance(speedup, dict) and speedup:
            lines += [
                "",
                "Speed-up of `speedrun.toml` in training time: "
                + ", ".join(f"{v}x over {k}" for k, v in speedup.items())
                + ".",
            ]
        elif speedup:
            lines += ["", f"Speed-up in training time: {speedup}x."]
        if "target_met" in r:
            lines += [
                "",
                f"Target (<= {TARGET_S:g} s mean training, >= {TARGET_MEAN:g}% mean test accuracy, min >= "
                f"{TARGET_MIN:g}%): **{'met' if r['target_met'] else 'not met'}** on this machine.",
            ]
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=10, help="seeds per recipe in the speedrun section")
    parser.add_argument(
        "--recipes",
        default="speedrun,previous",
        help=f"speedrun section: which of {', '.join(SPEEDRUN_CONFIGS)} (experiments/speedrun*.toml)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--device",
        default="cpu",
        help="device for mnistlab's runs (the report's script picks cuda when available, as it did)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for every run (OMP_NUM_THREADS; 0: torch's "
        "default, all cores). 1 gives steadier ratios on a busy shared machine; the figures that "
        "count are measured with the default on a quiet one",
    )
    parser.add_argument(
        "--name",
        default="",
        help="results file name without extension (default: bench_KIND, "
        "KIND being this CPU's kind from mnistlab.core.hardware: amx, avx512_bf16, avx512, avx2)",
    )
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the runs' processes inherit it
        torch.set_num_threads(args.threads)  # the roofline, in this process
    from mnistlab.core import hardware

    desc = hardware.describe(args.device)
    kind = desc["cpu"]["kind"]
    # every section records the machine it ran on: sections not rerun keep their own, with their results
    here = {
        "machine": hardware.summary(desc),
        "hardware": desc,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "device": args.device,
        "command": "python benchmarks/bench.py " + " ".join(sys.argv[1:]),
    }
    sections = args.sections.split(",")
    unknown = sorted({*sections} - {*SECTIONS}) or sorted({*args.recipes.split(",")} - {*SPEEDRUN_CONFIGS})
    if unknown:  # before minutes of measuring, not after
        parser.error(
            f"unknown section or recipe {unknown[0]!r}: sections are {', '.join(SECTIONS)}; "
            f"recipes are {', '.join(SPEEDRUN_CONFIGS)}"
        )
    name = (
        args.name or f"bench_{kind}{f'_{args.threads}t' if args.threads else ''}"
    )  # one results file per kind of CPU: figures differ by kind
    previous = args.out / f"{name}.json"
    res: dict = json.loads(previous.read_text()) if previous.is_file() else {}
    res.update(kind=kind, kind_label=hardware.KINDS[kind])
    print(f"[bench] {here['machine']}", flush=True)
    if "reproduce" in sections:
        res["reproduce"] = {**here, **section_reproduce(args.epochs, args.device)}
    if "roofline" in sections:
        res["roofline"] = {**here, **section_roofline()}
    if "speedrun" in sections:
        res["speedrun"] = {**here, **section_speedrun(args.seeds, args.device, args.recipes.split(","))}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
    md = markdown(res)
    (args.out / f"{name}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
