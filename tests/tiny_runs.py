"""A tiny trained classification run for the export and serve tests, trained once per session and shared
(the tests only read it: every export goes to its own folder)."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli, write_tiny_job


def train_tiny_run(folder: Path, model: Path) -> Path:
    """Train the tiny BERT on synthetic sentiment rows; return the run folder (test set included)."""
    recipe = write_tiny_job(folder, model)
    run = folder / "run"
    code, _, err = run_cli("train", str(recipe), "--output", str(run))
    assert code == 0, err
    return run


_SHARED: dict[str, Path] = {}


def shared_tiny_run(tmp_path_factory, model: Path) -> Path:
    """The same trained run for every test module in this session."""
    key = str(model)
    if key not in _SHARED:
        _SHARED[key] = train_tiny_run(tmp_path_factory.mktemp("tiny-run"), model)
    return _SHARED[key]
