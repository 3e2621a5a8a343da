"""Run a command and report its peak resident memory: ``python benchmarks/peak_rss.py OUT.json -- CMD ...``.

Why a launcher: Linux keeps a process's peak RSS (``ru_maxrss``) across ``exec``, so a child forked from a
benchmark driver that has imported torch and loaded MNIST starts with the driver's memory as its peak. This
small process (no imports beyond the standard library) forks the command instead, so the figure is the
command's own. Writes ``{"peak_rss_mib": ..., "returncode": ...}`` to OUT.json; exits with the command's code.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(cmd: list[str], **popen: object) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd`` through this launcher (stdout and stderr together, as text): (wall seconds, its peak RSS in
    MiB, the finished process). ``popen``: more arguments for ``subprocess.run`` (cwd, env, preexec_fn)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as rss:
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-S", __file__, rss.name, "--", *cmd],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            **popen,  # type: ignore[call-overload]  # subprocess.run's keyword arguments, passed through
        )
        wall = time.perf_counter() - start
        peak = json.loads(Path(rss.name).read_text())["peak_rss_mib"] if proc.returncode == 0 else float("nan")
    return wall, peak, proc


if __name__ == "__main__":
    args = sys.argv[1:]
    if len(args) < 3 or args[1] != "--":
        raise SystemExit(__doc__.splitlines()[0])
    out, _, *cmd = args
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"peak_rss_mib": round(usage.ru_maxrss / 1024, 1), "returncode": code}, f)
    sys.exit(code)
