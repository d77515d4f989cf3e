"""tuneforge search: the space file's checks, a pruned and resumable study on the tiny model, a killed search
that a rerun continues, and best.yaml that trains as it is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import run_cli, synthetic_rows, write_jsonl
from tuneforge.base.errors import UserError
from tuneforge.apps.search.space import override_item, parse_space


def test_space_errors_name_the_key_and_the_fix():
    cases = {
        "train.learning_rate: {type: logunifrom, low: 1.0e-5, high: 1.0e-3}": "did you mean 'loguniform'",
        "train.learning_rate: {type: loguniform, low: 0.0, high: 1.0e-3}": "loguniform needs `low` > 0",
        "train.warmup_ratio: {type: uniform, low: 0.3, high: 0.1}": "must be below `high`",
        "train.learning_rate: {type: uniform, low: 1e-5, high: 1.0e-3}": "write floats with a dot",
        "train.epochs: {type: int, low: 1, high: 4, stepp: 1}": "unknown field 'stepp'",
        "train.batch_size: {type: choice, values: []}": "non-empty list",
        "train.batch_size: {type: int, low: 8}": "int needs `high`",
    }
    for text, expected in cases.items():
        with pytest.raises(UserError) as error:
            parse_space(yaml.safe_load(text), "space.yaml")
        assert expected in str(error.value) and "space.yaml: " in str(error.value), (text, str(error.value))


def test_space_kinds_and_overrides_read_back_as_written():
    parameters = parse_space(yaml.safe_load(
        "train.learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n"
        "train.batch_size: [16, 32]\n"
        "train.epochs: {type: int, low: 1, high: 3}\n"))
    assert [p.kind for p in parameters] == ["loguniform", "choice", "int"]
    for value in (1e-05, 3, "cosine", None, True):
        key, _, text = override_item("train.x", value).partition("=")
        assert key == "train.x" and yaml.safe_load(text) == value  # 1e-05 must not come back as a string


def _search_job(folder: Path, tiny_model: Path, epochs: int = 2) -> tuple[Path, Path]:
    write_jsonl(folder / "train.jsonl", synthetic_rows(160, seed=1))
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""name: tiny-search
model: {tiny_model}
data: {{train: train.jsonl, max_length: 32, validation_fraction: 0.25}}
method: {{name: full}}
train: {{epochs: {epochs}, batch_size: 16, learning_rate: 3.0e-3, warmup_ratio: 0.0, early_stopping: null,
        num_threads: 1}}
""", encoding="utf-8")
    space = folder / "space.yaml"
    space.write_text("train.learning_rate: {type: loguniform, low: 1.0e-6, high: 3.0e-2}\n"
                     "train.batch_size: [8, 16]\n", encoding="utf-8")
    return recipe, space


def test_unknown_key_in_space_is_refused_before_any_trial(tmp_path, tiny_model):
    recipe, space = _search_job(tmp_path, tiny_model)
    space.write_text("train.learnin_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n", encoding="utf-8")
    code, _, err = run_cli("search", str(recipe), "--space", str(space), "--trials", "2",
                           "--output", str(tmp_path / "out"))
    assert code == 1
    assert "train.learnin_rate" in err and "did you mean 'learning_rate'" in err
    assert not (tmp_path / "out").exists()


def test_search_prunes_writes_best_recipe_and_continues(tmp_path, tiny_model):
    recipe, space = _search_job(tmp_path, tiny_model)
    out = tmp_path / "out"
    args = ["search", str(recipe), "--space", str(space), "--output", str(out), "--metric", "loss"]
    code, stdout, err = run_cli(*args, "--trials", "7")
    assert code == 0, err
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 7 and set(trials["state"]) <= {"complete", "pruned"}
    assert (trials["state"] == "pruned").sum() >= 1, trials  # the median pruner stopped a poor trial after epoch 1
    pruned = trials[trials["state"] == "pruned"].iloc[0]
    assert pruned["epochs"] == 1 and not (Path(pruned["run_dir"]) / "model").exists()
    best = trials[trials["state"] == "complete"].sort_values("value").iloc[0]
    assert (Path(best["run_dir"]) / "model").is_dir()

    # best.yaml is a ready-to-run recipe carrying the best trial's values
    from tuneforge.core.recipe import load_recipe

    best_recipe = load_recipe(out / "best.yaml")
    assert best_recipe.train.learning_rate == pytest.approx(best["train.learning_rate"])
    assert best_recipe.train.batch_size == best["train.batch_size"]
    assert f"best: trial {int(best['trial'])}" in stdout
    assert (out / "importance.png").stat().st_size > 0 and (out / "search.md").is_file()

    # the same folder (and so the same storage) continues the study: trial numbers go on
    code, _, err = run_cli(*args, "--trials", "8")
    assert code == 0, err
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["trial"]) == list(range(8))
    assert trials["train.learning_rate"].nunique() == 8  # the continued study draws new points, not replays

    # ... but not with another space: its trials would not be comparable
    space.write_text("train.learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-3}\n", encoding="utf-8")
    code, _, err = run_cli(*args, "--trials", "9")
    assert code == 1 and "another search space" in err


def test_killed_search_continues_on_rerun(tmp_path, tiny_model):
    """A search (two worker processes) killed mid-study; the same command afterwards continues the study."""
    recipe, space = _search_job(tmp_path, tiny_model, epochs=1)
    out, storage = tmp_path / "out", f"sqlite:///{tmp_path / 'shared-study.db'}"
    args = ["search", str(recipe), "--space", str(space), "--output", str(out), "--storage", storage,
            "--pruner", "none"]
    process = subprocess.Popen([sys.executable, "-m", "tuneforge", *args, "--trials", "40", "--jobs", "2"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    import optuna

    deadline = time.time() + 240
    finished_before = 0
    try:
        while time.time() < deadline and process.poll() is None:
            time.sleep(2)
            try:
                study = optuna.load_study(study_name="tiny-search", storage=storage)
                finished_before = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
            except KeyError:  # the study is not created yet
                continue
            if finished_before >= 1:
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the command and both its workers, mid-trial
        process.wait()
    assert finished_before >= 1, process.stderr.read().decode()[-2000:]
    numbers_before = len(optuna.load_study(study_name="tiny-search", storage=storage).trials)

    code, stdout, err = run_cli(*args, "--trials", str(finished_before + 2))
    assert code == 0, err
    study = optuna.load_study(study_name="tiny-search", storage=storage)
    finished = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    assert len(finished) >= finished_before + 2
    assert len(study.trials) >= numbers_before + 2  # new trials were added after the killed ones
    assert "continuing study" in err


def test_pruners_and_samplers_are_optunas_own(tmp_path):
    import optuna

    from tuneforge.apps.search.study import SearchSpec, open_study

    spec = SearchSpec(recipe=str(tmp_path / "unused.yaml"), space_file="space.yaml",
                      space={"train.epochs": {"type": "choice", "values": [2, 5]}},
                      storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s", metric="accuracy",
                      direction="maximize", sampler="tpe", pruner="hyperband", trials=12, jobs=1,
                      output=str(tmp_path), seed=42)
    study = open_study(spec)
    assert isinstance(study.pruner, optuna.pruners.HyperbandPruner) and study.pruner._max_resource == 5
    assert isinstance(study.sampler, optuna.samplers.TPESampler)
    spec.pruner, spec.sampler = "none", "random"
    study = open_study(spec)
    assert isinstance(study.pruner, optuna.pruners.NopPruner)
    assert isinstance(study.sampler, optuna.samplers.RandomSampler)
