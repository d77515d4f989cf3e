"""``manifest.json``: what a run was made from, so that it can be reproduced or audited later.

Written when a run starts (and amended when it ends or resumes): the hash of the resolved recipe, the
sha256, size and row count of every data file, the seed, library versions, tuneforge's version and git
commit, the platform, start and end times, and after a resume which checkpoint was loaded and why.
``run.json`` (:class:`tuneforge.base.runfolder.RunStatus`) keeps the run's state and results; this file keeps its
inputs. The hashes of the model files themselves are in ``artifacts.json`` (:mod:`tuneforge.base.integrity`).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tuneforge import __version__
from tuneforge.base.atomic import write_json_atomic
from tuneforge.base.machine import cpu_model, git_commit, library_versions
from tuneforge.base.tables import read_table

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recipe_hash(recipe) -> str:
    """sha256 of the fully resolved recipe (keys sorted): equal for the same job however it was written."""
    canonical = yaml.safe_dump(recipe.to_yaml_dict(), sort_keys=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def count_rows(path: Path) -> int | None:
    """Rows of a data file as tuneforge reads it (None for a folder or an unreadable file)."""
    if not Path(path).is_file():
        return None
    try:
        return int(len(read_table(path)))
    except Exception:  # noqa: BLE001 - a manifest never fails a run; the data was already validated
        return None


def data_files(recipe) -> dict[str, dict[str, Any]]:
    files = {}
    for split in ("train", "validation", "test"):
        path = getattr(recipe.data, split, None)
        if path is None:
            continue
        path = Path(path)
        entry: dict[str, Any] = {"path": str(path)}
        if path.is_file():
            entry.update(bytes=path.stat().st_size, sha256=sha256_file(path), rows=count_rows(path))
        files[split] = entry
    return files


def platform_facts() -> dict[str, Any]:
    import torch  # the manifest records torch's threads and GPU; base itself does not need torch

    facts = {"python": platform.python_version(), "system": f"{platform.system()} {platform.release()}",
             "machine": platform.machine(), "cpu": cpu_model(), "logical_cores": os.cpu_count(),
             "torch_threads": torch.get_num_threads(), "gpu": None}
    if torch.cuda.is_available():
        facts["gpu"] = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                        "capability": ".".join(map(str, torch.cuda.get_device_capability(0)))}
    return facts


def start_manifest(run_dir: Path, recipe, recipe_path: str | Path | None, overrides: list[str],
                   resume: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``run_dir/manifest.json`` at the start of a run; on a resume, keep the first start's record and
    add the resume (``resume``: the facts :func:`tuneforge.core.engine.resume.resume_facts` returns)."""
    path = Path(run_dir) / MANIFEST_NAME
    now = datetime.now().isoformat(timespec="seconds")
    if resume and path.is_file():
        manifest = json.loads(path.read_text(encoding="utf-8"))
        resumes = resume.get("resumes") or []
        manifest["resumes"] = resumes
        manifest["resumed_from"] = resumes[-1] if resumes else None
        manifest.update(status="running", ended=None)
        manifest["recipe_sha256_at_resume"] = recipe_hash(recipe)
        write_json_atomic(path, manifest)
        return manifest
    versions = library_versions()
    manifest = {
        "format": FORMAT_VERSION,
        "run": Path(run_dir).name,
        "recipe_sha256": recipe_hash(recipe),
        "recipe_file": {"path": str(recipe_path), "sha256": sha256_file(Path(recipe_path))}
        if recipe_path is not None and Path(recipe_path).is_file() else None,
        "overrides": list(overrides),
        "seed": recipe.train.seed,
        "data": data_files(recipe),
        "tuneforge": {"version": __version__, "git_commit": git_commit()},
        "libraries": {k: v for k, v in versions.items() if k not in ("tuneforge", "python")},
        "platform": platform_facts(),
        "started": now,
        "ended": None,
        "status": "running",
        # Filled after `tuneforge train --resume`: the checkpoint loaded, when, and the ones skipped (and why).
        "resumed_from": None,
        "resumes": [],
    }
    write_json_atomic(path, manifest)
    return manifest


def finish_manifest(run_dir: Path, status: str) -> None:
    """Record the end time and final status (called by :meth:`tuneforge.base.runfolder.RunStatus.finish`)."""
    path = Path(run_dir) / MANIFEST_NAME
    if not path.is_file():
        return
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest.update(ended=datetime.now().isoformat(timespec="seconds"), status=status)
    write_json_atomic(path, manifest)
