"""The run folder around a resume or a distributed launch: what ``tuneforge train`` checks and records.

``tuneforge train --resume RUN_DIR`` continues a run from its newest intact checkpoint with the recipe the
run wrote (``RUN_DIR/config.yaml``); :func:`check_resumable` refuses what cannot be resumed before any model
is loaded. Under ``accelerate launch`` rank 0 creates the run folder and tells the others where it is
(:func:`create_run_dir`).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from tuneforge.base.errors import UserError
from tuneforge.base.runfolder import is_completed, new_run_dir
from tuneforge.core.engine.distributed import Distributed


def check_resumable(run_dir: str | Path, recipe_path: str | None, overrides: list[str],
                    output: str | None = None) -> Path:
    """The recipe file to resume ``run_dir`` with (its config.yaml); UserError when it cannot be resumed."""
    run_dir = Path(run_dir)
    if recipe_path is not None or overrides or output is not None:
        raise UserError("train --resume RUN_DIR continues with the run's own config.yaml in that folder; give no "
                        "RECIPE, --set or --output (to change the recipe, start a new run)")
    config = run_dir / "config.yaml"
    if not config.is_file():
        raise UserError(f"{run_dir}: not a tuneforge run folder (no config.yaml); give the folder `tuneforge train` "
                        "printed as 'run folder: ...'")
    status = _read_status(run_dir).get("status")
    if is_completed(status):
        raise UserError(f"{run_dir}: this run completed; there is nothing to resume (start a new run instead)")
    if not os.access(run_dir, os.W_OK):
        raise UserError(f"{run_dir}: is not writable; a resumed run writes its checkpoints and model there")
    return config


def _read_status(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def resume_facts(run_dir: Path, checkpoint: Path | None, skipped: list[dict[str, str]]) -> dict[str, Any]:
    """What run.json keeps about resumes: the first start, and each resume (checkpoint used, ones skipped)."""
    if checkpoint is None:
        return {}
    previous = _read_status(run_dir)
    resumes = list(previous.get("resumes", []))
    resumes.append({"at": datetime.now().isoformat(timespec="seconds"), "checkpoint": checkpoint.name,
                    "skipped": skipped, "previous_status": previous.get("status")})
    facts = {"first_started": previous.get("first_started", previous.get("started")), "resumes": resumes}
    if "base_validation" in previous:  # measured before training began (language models), not again on resume
        facts["base_validation"] = previous["base_validation"]
    return facts


def create_run_dir(dist: Distributed, output: str | None, name: str) -> Path:
    """Rank 0 creates the run folder (never overwriting one); every process learns its path (or the error)."""
    created: Path | UserError | None = None
    if dist.is_main:
        try:
            created = new_run_dir(output, name)
        except UserError as error:
            created = error
    created = dist.broadcast(created)
    if isinstance(created, UserError):
        raise created
    return Path(created)

