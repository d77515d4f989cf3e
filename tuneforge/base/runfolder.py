"""The run folder: where a run writes, and the rule that an existing run is never overwritten."""

from __future__ import annotations

import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from tuneforge.base.atomic import write_json_atomic
from tuneforge.base.errors import UserError
from tuneforge.base.manifest import finish_manifest

# Weight files that are Python pickles: loading one can run code.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle", ".ckpt")


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


# run.json status of a run that finished but whose final model is no better than one that learned nothing
# (tuneforge.core.evaluate.learning_guard); it is complete all the same: saved, evaluated, not resumable.
DID_NOT_LEARN = "completed: did not learn"


def is_completed(status: str | None) -> bool:
    """Whether a run.json status is a finished run's: ``completed`` or ``completed: did not learn``."""
    return status in ("completed", DID_NOT_LEARN)


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
        finish_manifest(self.path.parent, status)

    def _write(self) -> None:
        write_json_atomic(self.path, self.data)


def is_classifier_run_folder(path: Path) -> bool:
    """Whether ``path`` is the folder of a finished classification-style run (its recipe and label names)."""
    return (path / "config.yaml").is_file() and (path / "labels.json").is_file()


def refuse_pickle_weights(folder: Path, allow_pickle: bool = False) -> None:
    """UserError when ``folder`` holds pickled weights and no safetensors (loading pickle can run code)."""
    if allow_pickle or not folder.is_dir():
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not any(folder.glob("*.safetensors")):
        raise UserError(f"{folder}: holds pickled weights ({', '.join(pickles)}), which can run code when loaded; "
                        "tuneforge loads safetensors only. Convert them, or set TUNEFORGE_ALLOW_PICKLE=1 if you "
                        "trust where they came from")
