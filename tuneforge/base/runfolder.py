"""The run folder: where a run writes, and the rule that an existing run is never overwritten."""

from __future__ import annotations

import json
import os
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tuneforge.base.errors import UserError


def new_run_dir(output: str | Path | None, name: str, root: str | Path = "runs") -> Path:
    """Create the run folder: ``output`` if given (must not exist or be empty), else runs/<name>-<timestamp>/."""
    if output is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        output = Path(root) / f"{name}-{stamp}"
        suffix = 1
        while output.exists():
            output = Path(root) / f"{name}-{stamp}-{suffix}"
            suffix += 1
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"{output}: already exists and is not empty; tuneforge never overwrites a run. "
                        "Choose another --output or remove that folder yourself")
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{output}: cannot create the run folder ({exc.strerror}); choose another --output") from None
    if not os.access(output, os.W_OK):
        raise UserError(f"{output}: is not writable; choose another --output")
    return output


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temporary file and rename, so a reader never sees half a file."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600; a run's files should read like any other
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(data, stream, indent=2, default=str)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


class RunStatus:
    """``run.json``: the run's state (running / completed / failed), times and facts about it."""

    def __init__(self, run_dir: Path, **facts: Any) -> None:
        self.path = run_dir / "run.json"
        self.started = time.time()
        self.data: dict[str, Any] = {"status": "running", "started": datetime.now().isoformat(timespec="seconds"), **facts}
        self._write()

    def update(self, **facts: Any) -> None:
        self.data.update(facts)
        self._write()

    def finish(self, status: str, **facts: Any) -> None:
        self.data.update(status=status, finished=datetime.now().isoformat(timespec="seconds"),
                         minutes=round((time.time() - self.started) / 60, 2), **facts)
        self._write()
        from tuneforge.apps.manifest import finish_manifest

        finish_manifest(self.path.parent, status)

    def _write(self) -> None:
        write_json_atomic(self.path, self.data)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (the metrics log)."""
    with path.open("a", encoding="utf-8") as stream:
        stream.write(json.dumps(record, default=float) + "\n")
