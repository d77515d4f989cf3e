"""Reading one run folder for the dashboard's pages: the metrics log as it grows, the evaluations, the files,
the resolved recipe, and the recipe keys that differ between runs. Reads only."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import yaml

from tuneforge.apps.runs import read_runs

ERRORS_SHOWN = 15  # most confident errors listed on the run page (the whole file is a download)
FILES_LISTED = 400


def display_status(status: str | None) -> tuple[str, str | None]:
    """The status word the pages show and a note: ``completed`` → finished; ``completed: did not learn`` →
    finished with that note; others (running, failed, interrupted, pruned, unreadable) as they are."""
    if not status:
        return "unknown", None
    word, _, note = status.partition(":")
    return ("finished" if word == "completed" else word), (note.strip() or None)


def run_row(run_dir: Path) -> dict[str, Any] | None:
    """The runs-table row of one run folder (as ``tuneforge runs`` reads it), or None without run.json."""
    rows = read_runs(run_dir) if (run_dir / "run.json").is_file() else []
    return rows[0] if rows else None


def read_status(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_metrics(run_dir: Path, offset: int = 0) -> dict[str, Any]:
    """The complete lines of ``metrics.jsonl`` after byte ``offset``, and the offset to ask from next time.
    ``reset`` is true when the file is now shorter than ``offset`` (a resume cut it back to its checkpoint):
    the lines are then the whole file again."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {"offset": 0, "reset": offset > 0, "lines": []}
    size = path.stat().st_size
    reset = size < offset
    start = 0 if reset else offset
    with path.open("rb") as stream:
        stream.seek(start)
        chunk = stream.read(size - start)
    complete = chunk[: chunk.rfind(b"\n") + 1]  # a line being appended right now waits for the next poll
    lines = []
    for raw in complete.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(raw)
        except ValueError:
            continue
        if isinstance(record, dict):
            lines.append(record)
    return {"offset": start + len(complete), "reset": reset, "lines": lines}


def read_config(run_dir: Path) -> tuple[str | None, dict[str, Any]]:
    """The resolved recipe (``config.yaml``) as text and as a dict (empty when absent or unreadable)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return None, {}
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    return text, data if isinstance(data, dict) else {}


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"epochs": 3}}`` → ``{"train.epochs": 3}``; lists stay values."""
    if not isinstance(data, dict):
        return {prefix: data} if prefix else {}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name))
        else:
            flat[name] = value
    return flat


def differing_keys(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The dotted recipe keys whose values are not the same in every config (a missing key counts as a value),
    with each config's value (None where absent)."""
    flats = [flatten(c) for c in configs]
    keys = sorted(set().union(*flats)) if flats else []
    rows = []
    for key in keys:
        values = [f.get(key) for f in flats]
        if any(v != values[0] or (key in f) != (key in flats[0]) for v, f in zip(values, flats)):
            rows.append({"key": key, "values": values})
    return rows


def read_evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """Each ``eval/<split>/`` folder: its metrics (per-class rows left out), whether it has a confusion matrix,
    and its most confident errors."""
    folder = run_dir / "eval"
    if not folder.is_dir():
        return []
    evaluations = []
    for split in sorted(p for p in folder.iterdir() if p.is_dir()):
        entry: dict[str, Any] = {"split": split.name, "metrics": {}, "confusion_matrix": None, "errors": None}
        try:
            metrics = json.loads((split / "metrics.json").read_text(encoding="utf-8"))
            entry["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        except (OSError, ValueError):
            pass
        if (split / "confusion_matrix.png").is_file():
            entry["confusion_matrix"] = f"eval/{split.name}/confusion_matrix.png"
        if (split / "errors.csv").is_file():
            entry["errors"] = read_csv_head(split / "errors.csv", ERRORS_SHOWN)
            entry["errors_file"] = f"eval/{split.name}/errors.csv"
        evaluations.append(entry)
    return evaluations


def read_csv_head(path: Path, rows: int) -> dict[str, Any]:
    """The header and the first ``rows`` rows of a CSV file."""
    with path.open(encoding="utf-8", newline="") as stream:
        reader = csv.reader(stream)
        header = next(reader, [])
        body = [row for _, row in zip(range(rows), reader)]
    return {"columns": header, "rows": body}


def list_files(run_dir: Path) -> list[dict[str, Any]]:
    """Every file of the run folder (path relative to it, bytes), checkpoints included, up to FILES_LISTED."""
    files = []
    for path in sorted(run_dir.rglob("*")):
        if path.is_file() and not path.is_symlink():
            files.append({"path": path.relative_to(run_dir).as_posix(), "bytes": path.stat().st_size})
            if len(files) >= FILES_LISTED:
                break
    return files

