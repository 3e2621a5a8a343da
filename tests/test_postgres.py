"""Two `mnistlab tune` drivers share one study in a real PostgreSQL server (Optuna's distributed mode).

The server is Debian's PostgreSQL (.ci/run installs it when missing), started here on a temporary data
directory and a free loopback port as the ``postgres`` user (it refuses to run as root), and stopped after.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import write_mnist_dir


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@pytest.fixture(scope="module")
def postgres_url():
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("Debian's postgresql is not installed (.ci/run installs it)")
    base = Path(tempfile.mkdtemp(prefix="mnistlab-pg-"))
    os.chmod(base, 0o755)
    datadir = base / "data"
    datadir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        _as_postgres(str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    opts = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1"
    subprocess.run(
        _as_postgres(
            str(bindir / "pg_ctl"),
            "-D",
            str(datadir),
            "-o",
            opts,
            "-w",
            "-t",
            "60",
            "-l",
            str(datadir / "log"),
            "start",
        ),
        check=True,
        capture_output=True,
        timeout=90,
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            _as_postgres(str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(base, ignore_errors=True)


def test_two_drivers_share_one_study_with_an_exact_budget(postgres_url, tmp_path, mnist):
    import optuna

    data_dir = write_mnist_dir(tmp_path / "data", mnist, 1000, 200)
    cfg = tmp_path / "base.toml"
    cfg.write_text(
        f'name = "shared"\n[data]\ndir = "{data_dir}"\n[model]\nhidden = [8]\n[train]\nepochs = 2\nthreads = 1\n'
    )
    space = tmp_path / "space.toml"
    space.write_text('[params."optim.lr"]\ntype = "float"\nlow = 0.001\nhigh = 0.5\nlog = true\n')
    trials = 10

    def driver(name: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mnistlab",
                "tune",
                str(cfg),
                "--space",
                str(space),
                "--trials",
                str(trials),
                "--storage",
                postgres_url,
                "--pruner",
                "none",
                "--out",
                str(tmp_path / name),
                "--quiet",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    procs = [driver("a"), driver("b")]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs

    study = optuna.load_study(study_name="shared", storage=postgres_url)
    S = optuna.trial.TrialState
    done = study.get_trials(states=(S.COMPLETE,))
    numbers = [t.number for t in study.get_trials()]
    assert len(done) == trials  # exactly the budget, across both drivers
    assert len(numbers) == len(set(numbers))  # no trial number repeats
    others = [t for t in study.get_trials() if t.state != S.COMPLETE]
    assert all(t.state == S.FAIL and t.user_attrs.get("over_budget") for t in others)  # drawn, never run
    # each driver wrote the run directories of the trials it ran; its table lists the study's trials
    ran = {d: {int(p.name[5:]) for p in (tmp_path / d / "trials").iterdir()} for d in "ab"}
    assert ran["a"].isdisjoint(ran["b"]) and ran["a"] | ran["b"] == {t.number for t in done}
    for d in "ab":
        table = json.loads((tmp_path / d / "trials.json").read_text())["trials"]
        assert ran[d] <= {t["number"] for t in table if t["state"] == "complete"}
