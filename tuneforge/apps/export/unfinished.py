"""An export killed half-way (``kill -9``, a power cut) leaves its folder behind: this module lets the next
``tuneforge export`` into the same folder start over, and keeps anything from taking that folder for a
finished export.

The first thing an export writes into its folder is ``export_report.json`` with ``"status": "writing"`` and
the exporting process's id; the status becomes ``checking`` once the model files are written and ``ok`` or
``failed`` when the checks are done. A folder whose report still says ``writing`` or ``checking`` while no
process of that id runs on this machine was left by a killed export: :func:`reclaim_unfinished_export`
empties it (with a warning). ``serve`` and ``predict`` refuse such a folder because its parity check never
finished (:func:`tuneforge.apps.export.runtime.load_classifier`).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

from tuneforge.apps.export.runtime import REPORT_NAME, remove_partial_export, write_report

UNFINISHED_STATUSES = ("writing", "checking")


def mark_unfinished(out: Path) -> None:
    """Say in ``out`` that an export is being written there, by this process, before any model file exists."""
    write_report(out, {"status": "writing", "pid": os.getpid(), "host": socket.gethostname()})


def reclaim_unfinished_export(out: Path, log: Callable[[str], None]) -> None:
    """Empty ``out`` when it holds what a killed export left (see the module docstring); else leave it alone."""
    try:
        report = json.loads((out / REPORT_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if not isinstance(report, dict) or report.get("status") not in UNFINISHED_STATUSES:
        return
    if report.get("host") == socket.gethostname() and _alive(report.get("pid")):
        return  # another export is writing there right now; the caller refuses the non-empty folder
    log(f"warning: {out} holds an export that was interrupted before it finished (status "
        f"'{report.get('status')}'); removing it and exporting again")
    remove_partial_export(out, created=False)


def _alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user holds that id
    return True
