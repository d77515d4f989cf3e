"""A tiny trained classification run for the export and serve tests, trained once per session and shared
(the tests only read it: every export goes to its own folder)."""

from __future__ import annotations

from pathlib import Path

from conftest import run_cli, synthetic_rows, write_jsonl


def train_tiny_run(folder: Path, model: Path) -> Path:
    """Train the tiny BERT on synthetic sentiment rows; return the run folder (test set included)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", synthetic_rows(240, seed=1))
    write_jsonl(folder / "test.jsonl", synthetic_rows(80, seed=2))
    recipe = folder / "recipe.yaml"
    recipe.write_text(
        f"""name: tiny
model: {model}
data:
  train: train.jsonl
  test: test.jsonl
  max_length: 32
method:
  name: full
train:
  epochs: 6
  batch_size: 16
  learning_rate: 3.0e-3
  warmup_ratio: 0.0
  early_stopping: null
""",
        encoding="utf-8",
    )
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
