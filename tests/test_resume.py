"""Exact resume: a training process killed with SIGKILL (or stopped with Ctrl-C) mid-epoch continues from its
checkpoint to the same weights and metrics, bit for bit in fp32 on CPU, as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_bert, run_cli, synthetic_rows, write_jsonl
from tuneforge.core.engine.checkpoint import checkpoint_dirs, verify

# Positions and timings differ between runs; every other field of metrics.jsonl must be identical.
TIMING_FIELDS = ("samples_per_s", "train_seconds")


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("resume")
    model = make_tiny_bert(folder / "tiny")
    write_jsonl(folder / "train.jsonl", synthetic_rows(240, seed=1))
    write_jsonl(folder / "test.jsonl", synthetic_rows(60, seed=2))
    # 14 batches per epoch; checkpoints every 4 optimizer steps land mid-epoch. Dropout stays on (0.1): the
    # torch RNG must be restored for the masks, and so the weights, to match.
    (folder / "recipe.yaml").write_text(f"""name: resume
model: {model}
data: {{train: train.jsonl, test: test.jsonl, max_length: 32}}
method: {{name: full}}
train:
  epochs: 3
  batch_size: 16
  learning_rate: 3.0e-3
  warmup_ratio: 0.1
  early_stopping: {{metric: accuracy, patience: 10}}
  log_every_steps: 3
  checkpoint_every_steps: 4
  keep_checkpoints: 3
  num_threads: 1
""", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def uninterrupted(job) -> Path:
    code, _, err = run_cli("train", str(job / "recipe.yaml"), "--output", str(job / "reference"))
    assert code == 0, err
    return job / "reference"


def start_training(job: Path, arguments: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tuneforge", *arguments], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_checkpoint(process: subprocess.Popen, run_dir: Path, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(path.name.endswith(f"-step-{step}") for path in checkpoint_dirs(run_dir)):
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended before checkpoint {step}: {process.stderr.read()}")
        time.sleep(0.02)
    process.kill()
    raise AssertionError(f"no checkpoint at step {step} within {timeout}s")


def metrics_without_timings(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]


def assert_same_run(resumed: Path, reference: Path) -> None:
    weights, expected = load_file(resumed / "model" / "model.safetensors"), load_file(
        reference / "model" / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name in expected:
        assert torch.equal(weights[name], expected[name]), f"{name} differs"
    assert metrics_without_timings(resumed) == metrics_without_timings(reference)
    test = json.loads((resumed / "eval" / "test" / "metrics.json").read_text())
    assert test == json.loads((reference / "eval" / "test" / "metrics.json").read_text())
    assert json.loads((resumed / "run.json").read_text())["status"] == "completed"


def test_ctrl_c_then_sigkill_mid_epoch_then_resume_matches_the_uninterrupted_run(job, uninterrupted):
    run_dir = job / "interrupted"
    # 1. Ctrl-C in epoch 1: a checkpoint is saved, the resume command printed, the exit is clean (130).
    process = start_training(job, ["train", str(job / "recipe.yaml"), "--output", str(run_dir)])
    wait_for_checkpoint(process, run_dir, step=4)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, err
    assert f"resume with: tuneforge train --resume {run_dir}" in out
    assert "Traceback" not in err
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "interrupted" and verify(Path(status["checkpoint"])) is None

    # 2. The resumed process is killed with SIGKILL in epoch 2, mid-epoch.
    process = start_training(job, ["train", "--resume", str(run_dir)])
    wait_for_checkpoint(process, run_dir, step=20)  # epoch 2, batch 6 of 14
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "model").exists()  # really killed mid-training

    # 3. The newest checkpoint is damaged (a disk fault): resume falls back to the one before, with a warning,
    #    and still ends bit for bit where the uninterrupted run did.
    newest = checkpoint_dirs(run_dir)[-1]
    weights = newest / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    assert "sha256" in verify(newest)

    code, out, err = run_cli("train", "--resume", str(run_dir))
    assert code == 0, err
    assert f"checkpoint {newest.name} is unusable" in err and "resumed from checkpoint-" in err
    assert_same_run(run_dir, uninterrupted)
    resumes = json.loads((run_dir / "run.json").read_text())["resumes"]
    assert [r["previous_status"] for r in resumes] == ["interrupted", "running"]
    assert resumes[-1]["skipped"][0]["checkpoint"] == newest.name
    assert not (run_dir / "checkpoints").exists()  # a finished run keeps no checkpoints


def test_resume_refuses_what_it_cannot_continue(job, uninterrupted, tmp_path):
    code, _, err = run_cli("train", "--resume", str(uninterrupted))
    assert code == 1 and "completed" in err
    code, _, err = run_cli("train", str(job / "recipe.yaml"), "--resume", str(uninterrupted))
    assert code == 1 and "give no RECIPE" in err
    code, _, err = run_cli("train", "--resume", str(uninterrupted), "--output", str(tmp_path / "elsewhere"))
    assert code == 1 and "--output" in err
    code, _, err = run_cli("train", "--resume", str(tmp_path))
    assert code == 1 and "not a tuneforge run folder" in err


class StopAfter:
    """A Ctrl-C that arrives at the ``steps``-th optimizer step end (what StopRequest's handler would set)."""

    def __init__(self, steps: int) -> None:
        self.remaining = steps

    @property
    def requested(self) -> bool:
        self.remaining -= 1
        return self.remaining < 0


def assert_interrupted_in_process_resumes_exactly(recipe: Path, overrides: list[str], folder: Path,
                                                  stop_after_steps: int) -> None:
    """Train ``recipe`` once through; again, stopped after ``stop_after_steps`` optimizer steps and resumed from
    the checkpoint that stop wrote: the best metrics, every weight and ``metrics.jsonl`` must be identical."""
    from tuneforge.core.engine.checkpoint import TrainingInterrupted
    from tuneforge.core.engine.loop import train
    from tuneforge.core.engine.validate import validate_job

    job_ = validate_job(recipe, overrides)
    reference, interrupted = folder / "reference", folder / "interrupted"
    reference.mkdir()
    interrupted.mkdir()
    quiet = lambda message: None  # noqa: E731
    expected = train(job_.recipe, job_.data, reference, log=quiet)
    with pytest.raises(TrainingInterrupted) as info:
        train(job_.recipe, job_.data, interrupted, log=quiet, stop=StopAfter(stop_after_steps))
    assert info.value.checkpoint.name.endswith(f"-step-{stop_after_steps}")
    resumed = train(job_.recipe, job_.data, interrupted, log=quiet, resume_from=info.value.checkpoint)
    assert resumed.best_metrics == expected.best_metrics
    for (name, value), (_, other) in zip(expected.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(value, other), name
    assert metrics_without_timings(interrupted) == metrics_without_timings(reference)


@pytest.mark.parametrize("method", ["lora", "gradual"])
def test_interrupted_and_resumed_in_process_equals_uninterrupted(job, tmp_path, method):
    """Methods with adapters (LoRA), a changing trainable set and the frozen-prefix activation cache
    (gradual: 3 layers, epoch 3 still has the bottom one frozen) resume exactly too."""
    overrides = [f"method.name={method}", "train.epochs=3", "train.checkpoint_every_steps=100"]
    assert_interrupted_in_process_resumes_exactly(job / "recipe.yaml", overrides, tmp_path,
                                                  stop_after_steps=18)  # epoch 2, batch 4 of 14
