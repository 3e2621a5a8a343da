"""The benchmark scripts' own machinery (cheap checks; the measurements themselves are not tests)."""

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench  # noqa: E402 - the benchmarks folder goes on sys.path first
import peers  # noqa: E402 - the benchmarks folder goes on sys.path first


def test_peers_help_names_every_tool():
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--help"], capture_output=True, text=True, check=False
    )
    assert r.returncode == 0
    for tool in ("--peers-python", "--quick", "--threads"):
        assert tool in r.stdout


def _tiny(n: int = 1500) -> dict:
    from mnistlab.core import data

    ds = data.load()
    x = data.to_float(ds.train_images[: n + 500]).reshape(-1, 784).numpy()
    y = ds.train_labels[: n + 500].numpy()
    xt = data.to_float(ds.test_images[:500]).reshape(-1, 784).numpy()
    return {
        "x_train": x[:n],
        "y_train": y[:n],
        "x_val": x[n:],
        "y_val": y[n:],
        "x_test": xt,
        "y_test": ds.test_labels[:500].numpy(),
    }


def test_torch_peers_train_and_report_each_epoch():
    d = _tiny()
    for worker in (peers.worker_torch, peers.worker_fastest):
        r = worker(d, 1, 0)
        assert len(r["epochs"]) == 1 and r["train_s"] > 0
        assert 50 < r["final_test_acc"] <= 100, (worker.__name__, r["final_test_acc"])  # far above chance


def test_peak_rss_is_the_commands_own_not_the_launchers(tmp_path):
    """A driver holding 400 MB launches a small command: the command's peak must not include the driver's."""
    out = tmp_path / "rss.json"
    driver = (
        f"import numpy, subprocess, sys; big = numpy.ones(50_000_000); subprocess.run([sys.executable, '-S', "
        f"{str(ROOT / 'benchmarks' / 'peak_rss.py')!r}, {str(out)!r}, '--', sys.executable, '-S', '-c', 'pass'], "
        f"check=True)"
    )
    subprocess.run([sys.executable, "-c", driver], check=True)
    r = json.loads(out.read_text())
    assert r["returncode"] == 0 and r["peak_rss_mib"] < 100


def test_bench_tables_name_the_machine_of_each_section():
    res = {
        "kind": "avx512",
        "kind_label": "AVX-512, no AMX, no AVX512-BF16",
        "roofline": {
            "machine": "CPU A",
            "device": "cpu",
            "date": "d1",
            "peak_matmul_gflops_fp32": 1.0,
            "peak_matmul_gflops_bf16": 1.0,
            "step_fused_fp32": {"ms_per_step": 2.0, "gflops": 1.0, "fraction_of_peak": 0.5},
        },
        "speedrun": {
            "machine": "CPU B",
            "device": "cpu",
            "date": "d2",
            **{
                name: {
                    "config": f"{name}.toml",
                    "precision": ["fp32"],
                    "runs": [{"seed": 100}],
                    "train_s": {"mean": 3.0, "std": 0.1},
                    "wall_s": {"mean": 6.0},
                    "test_acc": {"mean": 99.1, "std": 0.05, "min": 99.0},
                }
                for name in ("speedrun", "previous")
            },
            "speedup_train_s": {"previous": 2.0},
            "target_met": True,
        },
    }
    md = bench.markdown(res)
    assert "Measured on: CPU A" in md and "Measured on: CPU B" in md and "**met**" in md


def test_every_test_file_a_script_names_exists():
    """A renamed test file must not leave a script running a path that no longer exists (pytest exits 4 on it).

    The scripts run on machines (a lent GPU, CI) where a missing file is found late or not at all."""
    scripts = [*sorted((ROOT / "benchmarks").glob("*.sh")), ROOT / ".ci" / "run"]
    named = {path for script in scripts for path in re.findall(r"\btests/[\w/]+\.py\b", script.read_text())}
    assert named, "no script names a test file: the pattern no longer matches them"
    missing = sorted(path for path in named if not (ROOT / path).is_file())
    assert not missing, f"named by a script but missing: {missing}"


def test_a_bf16_reproduce_that_fell_back_to_fp32_says_so():
    """On a CPU without native bf16 the `--precision bf16` run trains in fp32: its row must not read as bf16."""

    def row(precision: str | None) -> dict:
        r = {"wall_s": 30.0, "peak_rss_mib": 600.0, "final_val_acc": 98.0, "final_test_acc": 98.1}
        return {**r, "precision": precision} if precision else r

    for bf16, fell_back in (("fp32", True), ("bf16", False)):
        res = {
            "kind": "avx512",
            "kind_label": "AVX-512",
            "reproduce": {
                "machine": "CPU A",
                "device": "cpu",
                "date": "d",
                "report_script": row(None),
                "mnistlab_fp32": row("fp32"),
                "mnistlab_bf16": row(bf16),
            },
        }
        assert ("trained in fp32: no native bf16 here" in bench.markdown(res)) == fell_back


def test_bench_refuses_an_unknown_recipe_before_measuring(tmp_path):
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--recipes", "speedrun,bogus", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "unknown section or recipe 'bogus'" in r.stderr and "first" in r.stderr
    assert not any(tmp_path.iterdir())  # nothing measured, nothing written
