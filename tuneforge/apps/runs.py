"""``tuneforge runs [DIR]``: the run folders under DIR as one table (or JSON), read from their ``run.json``.

Reads only; a folder without ``run.json`` is not a run and is skipped, a ``run.json`` that cannot be read
is listed with status ``unreadable`` rather than hidden.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.base.errors import UserError

COLUMNS = ("name", "task", "model", "method", "metric", "value", "minutes", "status", "checked", "from", "started")
SORT_KEYS = ("started", "name", "task", "model", "method", "value", "minutes", "status")
# The main metric of a run: the first of these found, test results before validation ones.
MAIN_METRICS = ("f1_macro", "f1_micro", "accuracy", "perplexity", "loss")


def main_metric(status: dict[str, Any]) -> tuple[str | None, float | None]:
    """("f1_macro (test)", 0.93): the run's headline number, or (None, None)."""
    for split in ("test", "validation"):
        metrics = status.get(split)
        if not isinstance(metrics, dict):
            continue
        for name in MAIN_METRICS:
            value = metrics.get(name)
            if isinstance(value, (int, float)):
                return f"{name} ({split})", float(value)
    return None, None


def integrity_state(run: Path) -> str | None:
    """"passed" / "failed": how the run's saved model fared in the integrity gate (``artifacts.json``, written
    when it was read back from disk); None when the run has no such record. ``tuneforge doctor RUN`` also
    re-hashes the files."""
    try:
        entry = json.loads((run / "artifacts.json").read_text(encoding="utf-8"))["artifacts"]["run"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return "passed" if entry.get("passed") else "failed"


def lineage(status: dict[str, Any]) -> str | None:
    """The folder name of the run this one continued from (``tuneforge train --from``), or None."""
    source = (status.get("continual") or {}).get("from") if isinstance(status.get("continual"), dict) else None
    return Path(source).name if source else None


def read_runs(folder: str | Path) -> list[dict[str, Any]]:
    """One row per run folder directly under ``folder`` (or ``folder`` itself when it is a run)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: folder not found; pass the folder your runs are in (default: runs/)")
    candidates = [folder] if (folder / "run.json").is_file() else sorted(p for p in folder.iterdir() if p.is_dir())
    rows = []
    for run in candidates:
        path = run / "run.json"
        if not path.is_file():
            continue
        try:
            status = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            rows.append({"name": run.name, "path": str(run), "status": "unreadable"})
            continue
        metric, value = main_metric(status)
        rows.append({"name": run.name, "path": str(run), "task": status.get("task"), "model": status.get("model"),
                     "method": status.get("method"), "metric": metric, "value": value,
                     "minutes": status.get("minutes"), "status": status.get("status"),
                     "checked": integrity_state(run), "from": lineage(status),
                     "started": status.get("first_started") or status.get("started")})
    return rows


def sort_runs(rows: list[dict[str, Any]], key: str, descending: bool = False) -> list[dict[str, Any]]:
    if key not in SORT_KEYS:
        raise UserError(f"runs: cannot sort by '{key}'; choose one of {', '.join(SORT_KEYS)}")
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]  # runs without the value go last either way
    return sorted(present, key=lambda r: r[key], reverse=descending) + missing


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table, one run per line."""
    def cell(row: dict[str, Any], column: str) -> str:
        value = row.get(column)
        if value is None:
            return "-"
        if column == "value":
            return f"{value:.4f}"
        if column == "minutes":
            return f"{value:.1f}"
        if column == "model" and len(str(value)) > 40:
            return "…" + str(value)[-39:]
        return str(value)

    cells = [[cell(row, column) for column in COLUMNS] for row in rows]
    widths = [max([len(column)] + [len(line[i]) for line in cells]) for i, column in enumerate(COLUMNS)]
    lines = ["  ".join(column.ljust(widths[i]) for i, column in enumerate(COLUMNS)).rstrip()]
    lines += ["  ".join(value.ljust(widths[i]) for i, value in enumerate(line)).rstrip() for line in cells]
    return "\n".join(lines)
