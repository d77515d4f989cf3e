"""Language-model tasks train through the one loop (tuneforge.core.engine.loop): exact resume after a kill,
Ctrl-C checkpoints, the NaN guard, early stopping and `search` with pruning hold for `task: sft` as they do for
classification — on a tiny random Llama built in the test."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from generative_fixtures import make_tiny_llama, write_sft_job
from test_resume import (assert_interrupted_in_process_resumes_exactly, metrics_without_timings, start_training,
                         wait_for_checkpoint)
from tuneforge.core.engine.loop import train
from tuneforge.core.engine.validate import validate_job
from tuneforge.core.tasks import LanguageModelTask, task_for

# Fields that measure time, not learning; every other field must match between resumed and uninterrupted runs.
TIMING_FIELDS = ("samples_per_s", "train_seconds", "generation_seconds")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("llama") / "model")


@pytest.fixture(scope="module")
def sft_job(tmp_path_factory, tiny_llama) -> Path:
    """LoRA SFT with dropout (the torch RNG must be restored for its masks), 18 batches an epoch, a checkpoint
    every 4 optimizer steps, test generations (greedy and sampled) at the end."""
    folder = tmp_path_factory.mktemp("sft-resume")
    return write_sft_job(folder, tiny_llama, method="lora", epochs=3, learning_rate=0.02).parent


def recipe_with_checkpoints(job: Path) -> Path:
    text = (job / "recipe.yaml").read_text(encoding="utf-8")
    text = text.replace("early_stopping: null}", "early_stopping: null, checkpoint_every_steps: 4, "
                                                 "keep_checkpoints: 3, log_every_steps: 3}")
    text = text.replace("method: {name: lora}", "method: {name: lora, dropout: 0.1}")
    path = job / "checkpointed.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_sft_killed_mid_epoch_resumes_to_the_uninterrupted_run(sft_job):
    recipe = recipe_with_checkpoints(sft_job)
    code, _, err = run_cli("train", str(recipe), "--output", str(sft_job / "reference"))
    assert code == 0, err

    run_dir = sft_job / "killed"
    process = start_training(sft_job, ["train", str(recipe), "--output", str(run_dir)])
    wait_for_checkpoint(process, run_dir, step=24)  # epoch 2, batch 6 of 18
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL and not (run_dir / "model").exists()

    code, _, err = run_cli("train", "--resume", str(run_dir))
    assert code == 0, err
    assert "resumed from checkpoint-" in err
    reference = sft_job / "reference"
    weights, expected = (load_file(folder / "model" / "model.safetensors") for folder in (run_dir, reference))
    assert weights.keys() == expected.keys()
    for name in expected:  # LoRA merged into a plain causal LM: every weight bit for bit
        assert torch.equal(weights[name], expected[name]), f"{name} differs"
    assert metrics_without_timings(run_dir) == metrics_without_timings(reference)
    assert metrics_without_timings(run_dir)[0]["epoch"] == 0  # the base model's validation loss, measured once
    tested, expected_test = (
        {k: v for k, v in json.loads((folder / "eval" / "test" / "metrics.json").read_text()).items()
         if k not in TIMING_FIELDS} for folder in (run_dir, reference))
    assert tested == expected_test and "rouge_l" in tested and "perplexity" in tested
    assert (run_dir / "eval" / "test" / "samples.jsonl").read_text() == (
        reference / "eval" / "test" / "samples.jsonl").read_text()
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "completed" and status["resumes"][0]["previous_status"] == "running"
    assert status["base_validation"] == json.loads((reference / "run.json").read_text())["base_validation"]
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.parametrize("method", ["prompt", "full"])
def test_sft_interrupted_in_process_resumes_exactly(sft_job, tmp_path, method):
    """Prompt tuning (base + adapter, virtual tokens) and full fine-tuning resume exactly too."""
    overrides = [f"method.name={method}", "train.epochs=2", "train.checkpoint_every_steps=100",
                 "generative.generation.evaluate_base=false"]
    assert_interrupted_in_process_resumes_exactly(sft_job / "recipe.yaml", overrides, tmp_path,
                                                  stop_after_steps=22)  # epoch 2, batch 4 of 18


def test_nan_loss_steps_are_skipped_and_counted_for_sft(sft_job, tmp_path, monkeypatch):
    """The NaN/inf guard of the loop covers language models: a poisoned batch skips its step, too many stop the run."""
    from tuneforge.core.tasks import generative

    calls = {"n": 0}
    original = generative.TokenLoss.forward

    def poisoned(self, logits, labels):
        calls["n"] += 1
        loss = original(self, logits, labels)
        return loss * float("nan") if calls["n"] == 3 else loss  # the third training batch

    monkeypatch.setattr(generative.TokenLoss, "forward", poisoned)
    job = validate_job(sft_job / "recipe.yaml", ["train.epochs=1", "train.max_bad_steps=2",
                                                 "generative.generation.evaluate_base=false"])
    messages = []
    result = train(job.recipe, job.data, tmp_path, log=messages.append)
    assert sum("loss is nan at optimizer step 3; skipping that step" in m for m in messages) == 1, messages
    assert result.best_epoch == 1 and torch.isfinite(torch.tensor(result.best_metrics["loss"]))


def test_language_model_tasks_declare_what_they_support():
    sft, masked = task_for("sft"), task_for("masked-lm")
    assert isinstance(sft, LanguageModelTask) and sft.export_formats == ("safetensors",)
    assert "ia3" in sft.methods and "prompt" in sft.methods and "prompt" not in masked.methods
    assert not sft.supports_activation_cache and not sft.supports_distillation and sft.supports_search
    selection = sft.model_selection(None)
    assert selection.metric == "loss" and not selection.higher_is_better and selection.keep_best


def test_ia3_fine_tunes_the_decoder(tmp_path, tiny_llama):
    recipe = write_sft_job(tmp_path, tiny_llama, method="ia3", epochs=2, learning_rate=0.05)
    code, _, err = run_cli("train", str(recipe), "--output", str(tmp_path / "run"))
    assert code == 0, err
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["validation"]["loss"] < status["base_validation"]["loss"]  # it learned
    gate = json.loads((tmp_path / "run" / "artifacts.json").read_text())["artifacts"]["run"]
    assert gate["passed"] and gate["method"] == "ia3"


def test_search_on_an_sft_recipe_minimises_validation_loss(tmp_path, tiny_llama):
    recipe = write_sft_job(tmp_path, tiny_llama, method="lora", epochs=2, learning_rate=0.01)
    space = tmp_path / "space.yaml"
    space.write_text("train.learning_rate: {type: loguniform, low: 1.0e-5, high: 5.0e-2}\n", encoding="utf-8")
    out = tmp_path / "out"
    code, stdout, err = run_cli("search", str(recipe), "--space", str(space), "--output", str(out),
                                "--trials", "5", "--pruner", "median")
    assert code == 0, err
    assert json.loads((out / "search.json").read_text())["metric"] == "loss"
    trials = pd.read_csv(out / "trials.csv")
    assert len(trials) == 5 and set(trials["state"]) <= {"complete", "pruned"}
    completed = trials[trials["state"] == "complete"]
    best = completed.sort_values("value").iloc[0]  # minimised: the lowest validation loss is the best trial
    run = json.loads((Path(best["run_dir"]) / "run.json").read_text())
    assert best["value"] == pytest.approx(run["validation"]["loss"])
    assert best["value"] == pytest.approx(completed["value"].min())
    assert f"best: trial {int(best['trial'])}" in stdout
