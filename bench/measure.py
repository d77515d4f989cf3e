"""Whole-command wall time and peak RSS, measured the same way for every side of a bench.

Linux counts, in a child's peak RSS (``ru_maxrss``), the memory of the process it was forked from, as of
the exec: a command started straight from a bench process that has loaded torch and a model would report
at least the bench's own size. So each command is started by a small launcher (a bare Python process, a few
MiB), and the launcher reports its child's wall seconds and ``os.wait4`` rusage.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

LAUNCHER = r"""
import json, os, subprocess, sys, time
result, log, command = sys.argv[1], sys.argv[2], sys.argv[3:]
started = time.perf_counter()
with open(log, "w") as stream:
    process = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(process.pid, 0)
seconds = time.perf_counter() - started
with open(result, "w") as stream:
    json.dump({"code": os.waitstatus_to_exitcode(status), "seconds": seconds, "maxrss_kib": usage.ru_maxrss}, stream)
"""


def run_measured(command: list[str], log: Path) -> tuple[int, float, float]:
    """Run ``command`` (its output into ``log``); return (exit code, wall seconds, peak RSS in MiB) of that
    process alone."""
    with tempfile.TemporaryDirectory(prefix="tuneforge-measure-") as folder:
        result = Path(folder) / "result.json"
        subprocess.run([sys.executable, "-c", LAUNCHER, str(result), str(log), *command], check=True)
        measured = json.loads(result.read_text())
    return measured["code"], measured["seconds"], measured["maxrss_kib"] / 1024
