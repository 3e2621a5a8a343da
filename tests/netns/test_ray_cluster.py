"""Studies on a real multi-node Ray cluster (``ray.cluster_utils.Cluster``: a head node and two worker
nodes, each its own raylet and object store, on this machine).

These tests run inside a network namespace that holds only loopback (``unshare -n``), so Ray listens on
127.0.0.1 and nothing leaves the machine; tests/test_cluster.py starts them there. To run them by hand,
as root: ``unshare -n sh -c 'ip link set lo up && MNISTLAB_NETNS=1 python -m pytest tests/netns'``.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mnistlab.cli import main
from mnistlab.core.runs import study_run_dir

if os.environ.get("MNISTLAB_NETNS") != "1":
    pytest.skip("run by tests/test_cluster.py inside a loopback-only network namespace", allow_module_level=True)

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_tasks


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": True})
    nodes = [c.add_node(num_cpus=1), c.add_node(num_cpus=1)]
    c.wait_for_nodes()
    ray.init(address=c.address, logging_level="WARNING", log_to_driver=False)
    yield c, nodes
    ray.shutdown()
    c.shutdown()


def _config(path: Path, name: str, data_dir: Path, hidden: int = 16, epochs: int = 2, extra: str = "") -> Path:
    path.write_text(
        f'name = "{name}"\n[data]\ndir = "{data_dir}"\n[model]\nhidden = [{hidden}]\n'
        f"[train]\nepochs = {epochs}\nthreads = 1\n{extra}"
    )
    return path


def _numbers(run: Path) -> list[dict]:
    """A run's per-epoch metrics without the timing columns."""
    return [
        {k: v for k, v in row.items() if "seconds" not in k} for row in csv.DictReader((run / "metrics.csv").open())
    ]


def test_study_on_two_nodes_gives_the_sequential_table(cluster, small_mnist_dir, tmp_path):
    c, nodes = cluster
    a = _config(tmp_path / "a.toml", "plain", small_mnist_dir)
    b = _config(tmp_path / "b.toml", "momentum", small_mnist_dir, extra="[optim]\nmomentum = 0.9\nlr = 0.05\n")
    seq, dist = tmp_path / "seq", tmp_path / "ray"
    assert main(["compare", str(a), str(b), "--seeds", "2", "--quiet", "--out", str(seq)]) == 0
    assert main(["compare", str(a), str(b), "--seeds", "2", "--quiet", "--out", str(dist), "--ray", c.address]) == 0

    def rows(study):
        recs = json.loads((study / "compare.json").read_text())["rows"]
        return [{k: v for k, v in r.items() if k not in ("train_seconds_per_run", "ran_on")} for r in recs]

    assert rows(seq) == rows(dist)
    used = set()
    for name in ("plain", "momentum"):
        for seed in (123, 124):
            assert _numbers(study_run_dir(seq, name, seed)) == _numbers(study_run_dir(dist, name, seed))
            info = json.loads((study_run_dir(dist, name, seed) / "run.json").read_text())
            assert info["status"] == "complete" and info["node"]["node_ip"] == "127.0.0.1"
            used.add(info["node"]["node_id"])
    assert used == {n.node_id for n in nodes}  # both worker nodes trained runs
    assert not list(dist.rglob("*.tmp"))


def test_tune_on_ray_prunes_across_nodes(cluster, small_mnist_dir, tmp_path):
    c, _ = cluster
    base = _config(tmp_path / "base.toml", "tiny", small_mnist_dir, epochs=4)
    space = tmp_path / "space.toml"
    space.write_text('[params."optim.lr"]\ntype = "float"\nlow = 0.0001\nhigh = 1.0\nlog = true\n')
    out = tmp_path / "tune"
    assert (
        main(
            [
                "tune",
                str(base),
                "--space",
                str(space),
                "--trials",
                "8",
                "--pruner-startup",
                "2",
                "--out",
                str(out),
                "--quiet",
                "--ray",
                c.address,
            ]
        )
        == 0
    )
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 8 and len({t["number"] for t in trials}) == 8
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned and all(t["epochs_run"] < 4 for t in pruned)  # stopped on the worker, told by the driver
    for t in trials:
        assert (out / "trials" / f"trial{t['number']:04d}" / "metrics.csv").is_file()
    # extended, the search continues its sequence: no earlier trial's parameters drawn again
    assert (
        main(
            [
                "tune",
                str(base),
                "--space",
                str(space),
                "--trials",
                "10",
                "--pruner-startup",
                "2",
                "--out",
                str(out),
                "--quiet",
                "--ray",
                c.address,
            ]
        )
        == 0
    )
    trials = json.loads((out / "trials.json").read_text())["trials"]
    assert len(trials) == 10 and len({t["optim.lr"] for t in trials}) == 10


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_driver_interrupted_then_rerun_skips_finished_runs(cluster, small_mnist_dir, tmp_path):
    c, _ = cluster
    cfg = _config(tmp_path / "slow.toml", "slow", small_mnist_dir, hidden=256, epochs=25)
    out = tmp_path / "study"
    argv = [
        sys.executable,
        "-m",
        "mnistlab",
        "compare",
        str(cfg),
        "--seeds",
        "4",
        "--out",
        str(out),
        "--ray",
        c.address,
    ]
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        _wait_for(lambda: any(out.glob("slow/seed*/run.json")), 120, "a finished run")
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, output
    finished = sorted(p.parent.name for p in out.glob("slow/seed*/run.json"))
    assert 1 <= len(finished) < 4
    for name in finished:
        assert json.loads((out / "slow" / name / "run.json").read_text())["status"] == "complete"
    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    for name in finished:
        assert f"slow/{name}: complete, skipped" in again.stdout
    assert sorted(p.parent for p in out.glob("slow/*/run.json")) == [
        study_run_dir(out, "slow", s) for s in range(123, 127)
    ]


def test_node_that_dies_mid_study_has_its_run_retried_elsewhere(cluster, small_mnist_dir, tmp_path):
    c, nodes = cluster
    cfg = _config(tmp_path / "slow.toml", "slow", small_mnist_dir, hidden=256, epochs=25)
    out = tmp_path / "study"
    result = {}
    driver = threading.Thread(
        target=lambda: result.update(
            code=main(["compare", str(cfg), "--seeds", "4", "--quiet", "--out", str(out), "--ray", c.address])
        )
    )
    driver.start()
    doomed = nodes[1]

    def running_on_doomed():
        return [
            t
            for t in list_tasks(filters=[("state", "=", "RUNNING")], detail=True)
            if t.node_id == doomed.node_id and t.name == "train_in_tempdir"
        ]

    _wait_for(running_on_doomed, 120, "a run in flight on the second node")
    c.remove_node(doomed)
    driver.join(timeout=300)
    assert result.get("code") == 0
    runs = sorted(p.name for p in (out / "slow").iterdir())
    assert runs == [study_run_dir(out, "slow", s).name for s in range(123, 127)]  # every run once, none half-written
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.old"))
    for r in runs:
        assert json.loads((out / "slow" / r / "run.json").read_text())["status"] == "complete"

    # Ray reports task events asynchronously: wait until both attempts of the retried run are recorded
    def attempts():
        return list_tasks(filters=[("name", "=", "train_in_tempdir")], detail=True, limit=1000)

    def failed_and_retried():
        tasks = attempts()
        failed = {t.task_id for t in tasks if t.node_id == doomed.node_id and t.state == "FAILED"}
        return [t for t in tasks if t.task_id in failed and t.attempt_number > 0 and t.node_id]

    _wait_for(failed_and_retried, 30, "the failed attempt on the removed node and its retry")
    assert {t.node_id for t in failed_and_retried()} == {nodes[0].node_id}  # run again on the surviving node


def _embedded(tmp_path: Path, data_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cfg = _config(tmp_path / "e.toml", "e", data_dir, epochs=1)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mnistlab",
            "compare",
            str(cfg),
            "--seeds",
            "1",
            "--out",
            str(tmp_path / "e"),
            "--ray",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_embedded_ray_refuses_what_it_cannot_schedule_and_runs_quietly(small_mnist_dir, tmp_path):
    """An embedded Ray (this machine only) refuses a request no node can meet in one line instead of waiting
    forever; a run it can schedule prints no token warning and no failed probe for a local IP."""
    for extra, offers in ((["--gpus-per-run", "0.5"], "0.5 GPU"), (["--cpus-per-run", "64"], "64 CPU")):
        proc = _embedded(tmp_path, small_mnist_dir, *extra)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and "no run can start" in proc.stderr and offers in proc.stderr, proc.stderr
    ok = _embedded(tmp_path, small_mnist_dir)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stderr == "", ok.stderr  # no token warning, no "Failed to determine local IP"
    assert "e/seed123: epoch   1" in ok.stdout  # each epoch, from the Ray task


def test_a_request_no_node_of_a_cluster_meets_warns_then_stops(cluster, small_mnist_dir, tmp_path, capsys):
    c, _ = cluster
    cfg = _config(tmp_path / "g.toml", "g", small_mnist_dir, epochs=1)
    start = time.monotonic()
    assert (
        main(
            [
                "compare",
                str(cfg),
                "--seeds",
                "1",
                "--out",
                str(tmp_path / "g"),
                "--ray",
                c.address,
                "--gpus-per-run",
                "1",
                "--ray-timeout",
                "2",
            ]
        )
        == 2
    )
    assert time.monotonic() - start < 60
    captured = capsys.readouterr()
    assert "warning: no node of the Ray cluster offers 1 CPU + 1 GPU per run now" in captured.out
    assert "no node of the Ray cluster has offered 1 CPU + 1 GPU per run for 2 s" in captured.err
    assert captured.err.count("\n") == 1


def test_a_diverging_config_on_ray_leaves_a_table_of_every_row(cluster, small_mnist_dir, tmp_path, capsys):
    c, _ = cluster
    a = _config(tmp_path / "a.toml", "plain", small_mnist_dir)
    bad = _config(tmp_path / "bad.toml", "huge_lr", small_mnist_dir, extra="[optim]\nlr = 1e30\n")
    out = tmp_path / "study"
    assert main(["compare", str(a), str(bad), "--seeds", "1", "--out", str(out), "--ray", c.address]) == 2
    captured = capsys.readouterr()
    assert "1 run diverged (huge_lr seed 123" in captured.err
    assert "plain/seed123: epoch   2" in captured.out  # the epochs of a Ray task reach the driver
    rows = {r["name"]: r for r in csv.DictReader((out / "compare.csv").open())}
    assert rows["plain"]["seeds"] == "1" and float(rows["plain"]["test_acc_mean"]) > 30
    assert rows["huge_lr"]["diverged_seeds"] == "123"
