"""Guards around training: non-finite losses, GPU out-of-memory, too little disk, pickle files, checkpoint
integrity, and the TensorBoard / MLflow trackers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from conftest import run_cli
from tuneforge.base.errors import UserError
from tuneforge.core.engine import checkpoint as checkpoint_module
from tuneforge.core.engine.checkpoint import Checkpointer, LoopState, checkpoint_dirs, find_resumable, verify

TRAIN_SETTINGS = ["--set", "train.epochs=2", "--set", "train.num_threads=1", "--set", "train.checkpoint_every_steps=4"]


def nan_training_losses(monkeypatch, first_good: int, bad: int) -> None:
    """Training losses (grad enabled) after the first ``first_good`` are NaN ``bad`` times; validation is untouched."""
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def cross_entropy(*args, **kwargs):
        loss = real(*args, **kwargs)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if first_good < calls["n"] <= first_good + bad:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", cross_entropy)


def test_non_finite_losses_are_skipped_then_stop_the_run_keeping_the_last_good_checkpoint(tiny_job, monkeypatch):
    nan_training_losses(monkeypatch, first_good=9, bad=100)
    run_dir = tiny_job.parent / "nan-run"
    code, _, err = run_cli("train", str(tiny_job), "--output", str(run_dir), *TRAIN_SETTINGS,
                           "--set", "train.max_bad_steps=3")
    assert code == 1
    assert "3 batches had a non-finite loss (train.max_bad_steps=3)" in err
    assert "skipping that step (1/3" in err
    newest = checkpoint_dirs(run_dir)[-1]
    assert newest.name.endswith("-step-8") and verify(newest) is None  # written before the first NaN
    assert f"the last good checkpoint is kept: {newest}" in err
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


def test_a_few_non_finite_losses_skip_their_steps_and_training_goes_on(tiny_job, monkeypatch):
    nan_training_losses(monkeypatch, first_good=3, bad=2)
    run_dir = tiny_job.parent / "nan-twice"
    code, _, err = run_cli("train", str(tiny_job), "--output", str(run_dir), *TRAIN_SETTINGS)
    assert code == 0, err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # 216 training rows / 16 = 14 batches per epoch; two of the 28 optimizer steps were skipped.
    assert [r["step"] for r in records if "validation_accuracy" in r] == [12, 26]
    assert err.count("skipping that step") == 2


def test_out_of_memory_names_the_keys_that_reduce_memory(tiny_job, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("tuneforge.core.engine.loop.build_optimizer", out_of_memory)
    code, _, err = run_cli("train", str(tiny_job), "--output", str(tiny_job.parent / "oom"), *TRAIN_SETTINGS)
    assert code == 1
    for key in ("train.batch_size", "train.grad_accum_steps", "train.gradient_checkpointing", "method.name: lora"):
        assert key in err
    assert "Traceback" not in err


def test_too_little_free_disk_stops_before_the_first_step(tiny_job, monkeypatch):
    class Usage:
        free = 2**20

    monkeypatch.setattr(checkpoint_module.shutil, "disk_usage", lambda path: Usage())
    run_dir = tiny_job.parent / "full-disk"
    code, _, err = run_cli("train", str(tiny_job), "--output", str(run_dir), *TRAIN_SETTINGS)
    assert code == 1 and "only 1 MiB free" in err and "train.keep_checkpoints" in err
    assert not (run_dir / "metrics.jsonl").exists()


def write_checkpoint(run_dir: Path, step: int) -> Path:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return Checkpointer(run_dir, keep=3).save(LoopState(optimizer_step=step), dict(model.named_parameters()),
                                              optimizer, scheduler, None, None)


def test_checkpoints_are_verified_pruned_and_pickle_is_refused(tmp_path):
    for step in (1, 2, 3, 4):
        write_checkpoint(tmp_path, step)
    kept = checkpoint_dirs(tmp_path)
    assert [path.name for path in kept] == ["checkpoint-000002-step-2", "checkpoint-000003-step-3",
                                            "checkpoint-000004-step-4"]
    assert all(verify(path) is None for path in kept)
    assert not list((tmp_path / "checkpoints").glob(".partial-*"))

    # A pickle file dropped into the newest, and a newer one without its manifest (a write cut short).
    torch.save({"x": torch.ones(1)}, kept[-1] / "optimizer.pt")
    partial = tmp_path / "checkpoints" / "checkpoint-000005-step-5"
    partial.mkdir()
    save_file({"x": torch.ones(1)}, str(partial / "weights.safetensors"))
    messages: list[str] = []
    found, skipped = find_resumable(tmp_path, log=messages.append)
    assert found == kept[-2]
    assert [s["checkpoint"] for s in skipped] == [partial.name, kept[-1].name]
    assert "manifest" in skipped[0]["problem"] and "pickle" in skipped[1]["problem"]
    assert find_resumable(tmp_path, log=messages.append, allow_pickle=True)[0] == kept[-1]


def test_predict_refuses_pickled_weights(tiny_job, monkeypatch):
    run_dir = tiny_job.parent / "pickled"
    code, _, err = run_cli("train", str(tiny_job), "--output", str(run_dir), "--set", "train.epochs=1",
                           "--set", "train.num_threads=1")
    assert code == 0, err
    weights = run_dir / "model" / "model.safetensors"
    from safetensors.torch import load_file

    torch.save(load_file(str(weights)), run_dir / "model" / "pytorch_model.bin")
    weights.unlink()
    code, _, err = run_cli("predict", str(run_dir), "--text", "a good film")  # the checked file is gone
    assert code == 1 and "model/model.safetensors: missing" in err
    # past the sha256 check (--no-verify), the pickle is still refused
    code, _, err = run_cli("predict", str(run_dir), "--text", "a good film", "--no-verify")
    assert code == 1 and "pickled weights (pytorch_model.bin)" in err and "TUNEFORGE_ALLOW_PICKLE" in err


def test_resume_of_a_run_without_checkpoints_says_why(tmp_path):
    (tmp_path / "config.yaml").write_text("name: x\n", encoding="utf-8")
    with pytest.raises(UserError, match="no checkpoint to resume from"):
        find_resumable(tmp_path)


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow"])
def test_report_to_writes_the_trackers_files(tiny_job, tracker, monkeypatch):
    pytest.importorskip(tracker)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # for the reading client below
    run_dir = tiny_job.parent / f"tracked-{tracker}"
    code, _, err = run_cli("train", str(tiny_job), "--output", str(run_dir), "--set", "train.epochs=2",
                           "--set", "train.num_threads=1", "--set", "train.log_every_steps=5",
                           "--set", f"train.report_to={tracker}")
    assert code == 0, err
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final_accuracy = [r for r in records if "validation_accuracy" in r][-1]["validation_accuracy"]
    if tracker == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        accuracy = events.Scalars("validation/accuracy")
        assert [e.step for e in accuracy] == [r["step"] for r in records if "validation_accuracy" in r]
        assert accuracy[-1].value == pytest.approx(final_accuracy)
        assert len(events.Scalars("train/loss")) == len([r for r in records if "loss" in r])
    else:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=(run_dir / "mlruns").resolve().as_uri())
        experiment = client.get_experiment_by_name("tuneforge")
        (run,) = client.search_runs([experiment.experiment_id])
        history = client.get_metric_history(run.info.run_id, "validation_accuracy")
        assert [m.step for m in history] == [r["step"] for r in records if "validation_accuracy" in r]
        assert history[-1].value == pytest.approx(final_accuracy)
        assert run.data.params["learning_rate"] == "0.003"
        assert run.info.status == "FINISHED"
