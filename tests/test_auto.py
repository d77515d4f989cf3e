"""``tuneforge auto``: the budget holds, the folder is a normal run folder, an interrupted auto continues its study,
auto.json has its documented structure; the pieces (method filter, weight average, folder rules) on their own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from conftest import run_cli, synthetic_rows, write_jsonl
from tuneforge.apps.auto.finish import WeightAverage
from tuneforge.apps.auto.session import methods_that_fit, output_folder
from tuneforge.apps.plan import MemoryEstimate
from tuneforge.base.errors import UserError

AUTO_JSON_KEYS = {"status", "recipe", "minutes", "metric", "direction", "data", "plan", "space", "trials", "finish",
                  "phases_s", "total_s", "within_budget", "choices"}
# The tiny BERT needs a large learning rate to learn the synthetic rows in a few epochs; a user's --set is kept.
# One thread: on a shared 2-core machine two OpenMP threads of a tiny model spin against other processes (measured
# 18 rows/s with two, 330 with one).
TINY_SETTINGS = ["--set", "train.learning_rate=3.0e-3", "--set", "train.batch_size=16", "--set",
                 "train.warmup_ratio=0.0", "--set", "train.num_threads=1"]


def minimal_recipe(folder: Path, model: Path) -> Path:
    """A recipe with only `model` and `data`, as auto asks; synthetic sentiment rows beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", synthetic_rows(200, seed=1))
    write_jsonl(folder / "test.jsonl", synthetic_rows(60, seed=2))
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"model: {model}\ndata:\n  train: train.jsonl\n  test: test.jsonl\n", encoding="utf-8")
    return recipe


def test_auto_stays_in_budget_and_writes_a_normal_run_folder(tmp_path, tiny_model):
    recipe = minimal_recipe(tmp_path / "job", tiny_model)
    output = tmp_path / "auto-run"
    started = time.perf_counter()
    code, out, err = run_cli("auto", str(recipe), *TINY_SETTINGS, "--minutes", "1", "--output", str(output))
    seconds = time.perf_counter() - started
    assert code == 0, err[-3000:]
    assert seconds <= 1.1 * 60, f"auto took {seconds:.1f}s for a 1-minute budget"

    state = json.loads((output / "auto.json").read_text(encoding="utf-8"))
    assert AUTO_JSON_KEYS <= set(state)
    assert state["status"] == "completed" and state["within_budget"]
    assert state["data"]["task"] == "classification" and set(state["data"]["label_counts"]) == {"negative", "positive"}
    assert 8 <= state["data"]["max_length"] <= 64 and state["data"]["max_length_coverage"] >= 0.99
    assert state["trials"] and all({"number", "state", "values", "value", "epochs_run", "seconds"} <= set(trial)
                                   for trial in state["trials"])
    assert {"mode", "epochs", "overrides", "soup", "validation"} <= set(state["finish"])
    assert "train.learning_rate (full)" not in state["space"]["searched"]  # set by the user: not searched
    markdown = (output / "auto.md").read_text(encoding="utf-8")
    for heading in ("## Data facts", "## Plan", "## Search space", "## Trials", "## Finish", "## Time per phase",
                    "## Why each choice"):
        assert heading in markdown

    code, out, err = run_cli("doctor", str(output))
    assert code == 0, out + err
    assert "FAILED" not in out
    code, out, _ = run_cli("predict", str(output), "--text", "the film was great")
    assert code == 0 and ("positive" in out or "negative" in out)
    holdout = write_jsonl(tmp_path / "holdout.jsonl", synthetic_rows(40, seed=3))
    code, _, err = run_cli("eval", str(output), "--data", str(holdout))
    assert code == 0, err
    code, _, err = run_cli("export", str(output), "--format", "safetensors", "--no-benchmark")
    assert code == 0, err

    # never overwritten: a finished auto folder is refused
    code, _, err = run_cli("auto", str(recipe), *TINY_SETTINGS, "--minutes", "0.5", "--output", str(output))
    assert code == 1 and "never overwrites" in err


def test_interrupted_auto_continues_its_study(tmp_path, tiny_model):
    recipe = minimal_recipe(tmp_path / "job", tiny_model)
    output = tmp_path / "auto-run"
    # killed (SIGKILL) in the first trial's validation; the budget is generous so that slow imports on a busy
    # machine still leave time for that trial (the kill comes long before the budget matters)
    env = dict(os.environ, TUNEFORGE_FAULT="validation:1")
    killed = subprocess.run([sys.executable, "-c", "import sys; from tuneforge.cli import main; sys.exit(main())",
                             "auto", str(recipe), *TINY_SETTINGS, "--minutes", "5", "--output", str(output)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode != 0
    before = json.loads((output / "auto.json").read_text(encoding="utf-8"))
    assert before["status"] == "searching"

    code, _, err = run_cli("auto", str(recipe), *TINY_SETTINGS, "--minutes", "1", "--output", str(output))
    assert code == 0, err[-3000:]
    assert "marked failed" in err
    after = json.loads((output / "auto.json").read_text(encoding="utf-8"))
    assert after["status"] == "completed" and after["resumed"]
    states = [trial["state"] for trial in after["trials"]]
    assert states[0] == "fail"  # the trial the kill interrupted, kept in the study
    assert len(states) >= 2 and "complete" in states[1:]  # the rerun went on with new trials of the same study


def fake_plan(**methods):
    def estimate(name, peak_gb, epoch_s):
        gb = 2**30
        # saving holds two copies of the weights: the peak
        memory = MemoryEstimate(weights=int(peak_gb * gb / 2), gradients=0, optimizer=0, best_copy=0, activations=0,
                                activations_checkpointed=0, runtime=0)
        return SimpleNamespace(method=name, error=None, memory=memory, epoch_seconds=epoch_s)
    return SimpleNamespace(methods=[estimate(name, *values) for name, values in methods.items()])


def test_methods_that_fit_drops_what_exceeds_memory_or_time():
    plan = fake_plan(full=(3.0, 100.0), lora=(1.5, 60.0), freeze=(1.0, 500.0))
    kept, rows = methods_that_fit(plan, memory_gb=2.0, finish_seconds=200.0)
    assert kept == ["lora"]
    assert not rows["full"]["fits"] and "GB" in rows["full"]["why"]
    assert not rows["freeze"]["fits"] and "one epoch" in rows["freeze"]["why"]
    kept, _ = methods_that_fit(plan, memory_gb=None, finish_seconds=10.0)  # nothing fits the time: the fastest
    assert kept == ["lora"]


def test_weight_average_is_kept_only_when_it_validates_better():
    model = nn.Linear(2, 1, bias=False)
    method = SimpleNamespace(optimizer_parameters=lambda m: list(m.named_parameters()))
    for better in (True, False):
        soup = WeightAverage("f1_macro")
        for epoch, value in enumerate((1.0, 3.0), start=1):
            with torch.no_grad():
                model.weight.fill_(value)
            soup.epoch_validated(model, method, epoch, {})
        # the kept epoch (value 3.0) is in the model; the average is 2.0
        score = lambda: {"f1_macro": 0.9 if (better and model.weight[0, 0].item() == 2.0) else 0.5}  # noqa: E731
        result = soup.final_weights(model, method, {"f1_macro": 0.6}, score)
        assert soup.outcome.used is better
        assert model.weight[0, 0].item() == (2.0 if better else 3.0)
        assert (result is not None) is better


def test_output_folder_never_overwrites(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something.txt").write_text("x")
    with pytest.raises(UserError, match="never overwrites"):
        output_folder(str(taken), "x")
    done = tmp_path / "done"
    done.mkdir()
    (done / "auto.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(UserError, match="finished auto run"):
        output_folder(str(done), "x")
    folder, previous = output_folder(str(tmp_path / "new"), "x")
    assert previous is None and (folder / "auto").is_dir()
