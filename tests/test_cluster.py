"""Runs tests/netns (a real two-node Ray cluster) inside a network namespace that holds only loopback.

Ray binds to the machine's own network address even when asked for 127.0.0.1; inside ``unshare -n``
the only interface is ``lo``, so the cluster's traffic cannot leave this machine. Creating the namespace
needs root (CI runs as root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _can_unshare(), reason="needs root for `unshare -n` (a loopback-only network namespace)")
def test_ray_cluster_tests_in_a_loopback_only_namespace():
    env = {**os.environ, "MNISTLAB_NETNS": "1", "RAY_USAGE_STATS_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    cmd = f"ip link set lo up && exec {sys.executable} -m pytest -q -p no:cacheprovider {ROOT / 'tests' / 'netns'}"
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", cmd], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], tail
