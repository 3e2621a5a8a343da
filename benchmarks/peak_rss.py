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
