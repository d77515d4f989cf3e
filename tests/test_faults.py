"""Faults, each a test: ``kill -9`` at six named points of a run and of an export, damaged newest checkpoints
and a full disk. After each, ``tuneforge train --resume RUN_DIR`` (or the export run again) ends exactly where
an uninterrupted run ends: the same weights bit for bit, the same metrics.jsonl and test metrics.

The kills are deterministic: ``TUNEFORGE_FAULT=POINT:N`` (:mod:`tuneforge.base.faults`) makes the process
send itself SIGKILL at the N-th pass through a named point. The killed commands run in child processes
forked from a forkserver that has imported tuneforge once, so a child starts in a fraction of a second; each
resume runs in-process."""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_bert, run_cli, synthetic_rows, write_jsonl
from tuneforge.apps.export.runtime import load_classifier
from tuneforge.base.errors import UserError, disk_full
from tuneforge.base.faults import FAULT_VARIABLE, parse_faults
from tuneforge.base.runfolder import is_completed
from tuneforge.core.engine.checkpoint import CHECKPOINTS_DIR, PARTIAL_PREFIX, checkpoint_dirs, verify

# Timings differ between runs; every other field of metrics.jsonl must be identical.
TIMING_FIELDS = ("samples_per_s", "train_seconds")
# 160 rows, 144 of them for training in batches of 16: 9 optimizer steps an epoch, 18 in all. Checkpoints every
# 4 steps and at each epoch's end: steps 4, 8, 9 (end of epoch 1), 12, 16, 18 (end of epoch 2); the newest 3
# are kept.
RECIPE = """name: faults
model: {model}
data: {{train: train.jsonl, test: test.jsonl, max_length: 32}}
method: {{name: full}}
train:
  epochs: 2
  batch_size: 16
  learning_rate: 3.0e-3
  warmup_ratio: 0.1
  early_stopping: {{metric: accuracy, patience: 10}}
  log_every_steps: 3
  checkpoint_every_steps: 4
  keep_checkpoints: 3
  num_threads: 1
"""


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("faults")
    model = make_tiny_bert(folder / "tiny", layers=2)
    write_jsonl(folder / "train.jsonl", synthetic_rows(160, seed=1))
    write_jsonl(folder / "test.jsonl", synthetic_rows(40, seed=2))
    (folder / "recipe.yaml").write_text(RECIPE.format(model=model), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def reference(job) -> Path:
    """The uninterrupted run every faulted run must end like."""
    code, _, err = run_cli("train", str(job / "recipe.yaml"), "--output", str(job / "reference"))
    assert code == 0, err
    return job / "reference"


@pytest.fixture(scope="module")
def forkserver():
    """A multiprocessing context whose children fork from a process that imported tuneforge's commands once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["tuneforge.cli.commands"])
    return context


def _child(argv: list[str], fault: str | None, log_path: str, file_size_limit: int | None) -> None:
    """Run ``tuneforge ARGV`` in this (forked) process under ``TUNEFORGE_FAULT=fault`` and a file-size limit."""
    if fault:
        os.environ[FAULT_VARIABLE] = fault
    if file_size_limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
    from tuneforge.cli import main

    with open(log_path, "w", encoding="utf-8") as stream, contextlib.redirect_stdout(stream), \
            contextlib.redirect_stderr(stream):
        code = main(argv)
    sys.exit(code)


def run_child(context, argv: list[str], log_path: Path, fault: str | None = None,
              file_size_limit: int | None = None) -> int:
    """Exit code of ``tuneforge ARGV`` in a child process (negative: killed by that signal)."""
    process = context.Process(target=_child, args=(argv, fault, str(log_path), file_size_limit))
    process.start()
    process.join(timeout=300)
    assert process.exitcode is not None, "the child did not finish within 300 s"
    return process.exitcode


def kill_at(context, job: Path, fault: str, name: str) -> Path:
    """Start a run, have it SIGKILLed at ``fault``; return its run folder (checked to be a killed run)."""
    run_dir = job / name
    code = run_child(context, ["train", str(job / "recipe.yaml"), "--output", str(run_dir)], job / f"{name}.log",
                     fault=fault)
    assert code == -signal.SIGKILL, (job / f"{name}.log").read_text()
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # nothing ran after the kill
    return run_dir


def metrics_without_timings(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]


def resume_and_compare(run_dir: Path, reference: Path) -> str:
    """``train --resume`` in-process, then: the same weights, metrics.jsonl and test metrics as ``reference``."""
    code, _, err = run_cli("train", "--resume", str(run_dir))
    assert code == 0, err
    weights = load_file(run_dir / "model" / "model.safetensors")
    expected = load_file(reference / "model" / "model.safetensors")
    assert weights.keys() == expected.keys()
    for name in expected:
        assert torch.equal(weights[name], expected[name]), f"{name} differs"
    assert metrics_without_timings(run_dir) == metrics_without_timings(reference)
    test = json.loads((run_dir / "eval" / "test" / "metrics.json").read_text())
    assert test == json.loads((reference / "eval" / "test" / "metrics.json").read_text())
    assert is_completed(json.loads((run_dir / "run.json").read_text())["status"])
    assert json.loads((run_dir / "artifacts.json").read_text())["artifacts"]["run"]["passed"]
    assert not (run_dir / CHECKPOINTS_DIR).exists()  # a completed run keeps no checkpoints
    return err


def test_a_full_disk_is_one_line_from_any_command(monkeypatch):
    """Any command's write refused for lack of space (an OSError, or a library's error carrying the OS error
    number, as safetensors raises) ends in one line, exit 1; other errors keep their traceback (bugs)."""
    from tuneforge.cli import commands

    assert disk_full(OSError(errno.ENOSPC, "No space left on device")) and disk_full(OSError(errno.EDQUOT, "quota"))
    assert disk_full(RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied")) and not disk_full(RuntimeError("os error 2"))

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.csv")

    monkeypatch.setattr(commands, "models_command", full)
    code, _, err = run_cli("models")
    assert code == 1 and err.strip() == ("error: the disk is full writing /data/out.csv (No space left on device); "
                                         "free some space (or raise the file-size limit, ulimit -f), then run the "
                                         "command again")
    monkeypatch.setattr(commands, "models_command", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_cli("models")


@pytest.fixture()
def small_disk(tmp_path):
    """A 1 MiB tmpfs (a real, small disk); skips where this process may not mount one (not root, no
    CAP_SYS_ADMIN)."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True,
                             text=True, check=False) if shutil.which("mount") else None
    if mounted is None or mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() if mounted else 'no mount command'})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_a_disk_too_small_for_the_run_is_refused_before_training(job, small_disk):
    """On a real 1 MiB disk, train refuses before the first step, in one line saying how much it needs."""
    run_dir = small_disk / "run"
    code, _, err = run_cli("train", str(job / "recipe.yaml"), "--output", str(run_dir))
    assert code == 1 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {run_dir}: only 1 MiB free on its disk; this run needs about "), last
    assert last.endswith("Free some space, choose another --output, or lower train.keep_checkpoints")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"


def test_fault_spec_is_checked():
    assert parse_faults("train-step:3, validation:1") == {"train-step": 3, "validation": 1}
    for bad in ("train-step", "train-step:0", "nowhere:1", "validation:x"):
        with pytest.raises(ValueError, match="POINT:N"):
            parse_faults(bad)


def resume_child(context, run_dir: Path, fault: str, log_name: str) -> str:
    """``train --resume RUN_DIR`` in a child SIGKILLed at ``fault``; returns what it printed."""
    log_path = run_dir.parent / f"{log_name}.log"
    code = run_child(context, ["train", "--resume", str(run_dir)], log_path, fault=fault)
    log = log_path.read_text()
    assert code == -signal.SIGKILL, f"not killed at {fault}: {log}"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running"  # nothing ran after the kill
    return log


def steps(run_dir: Path) -> list[int]:
    """The optimizer steps of the run's checkpoints, oldest first."""
    return [int(path.name.rsplit("-", 1)[1]) for path in checkpoint_dirs(run_dir)]


def test_a_run_faulted_at_every_point_ends_as_the_uninterrupted_run(job, reference, forkserver, tiny_parameters):
    """One run, faulted seven ways one after the other, each time resumed from what the fault left:

    0. disk full while writing the end-of-epoch-1 checkpoint (a file-size limit, ``ulimit -f``, that the
       mid-epoch checkpoints fit under but the first one that also holds the best epoch's weights does not);
    1. kill -9 mid-epoch (after optimizer step 11);
    2. kill -9 while writing a checkpoint (step 12's: weights written, state and manifest not);
    3. kill -9 during epoch 2's validation;
    4. the two newest checkpoints damaged (one truncated, one with a garbled manifest), then kill -9 while
       saving the final model;
    5. kill -9 after the model is saved and gated, while the test split is evaluated;
    6. resumed to the end: the same weights bit for bit, metrics.jsonl and test metrics as ``reference``.
    """
    run_dir = job / "faulted"
    # 0. A full disk: one clear line, the run folder resumable, nothing half-written left.
    limit = int(3.5 * 4 * tiny_parameters)  # mid-epoch: weights + AdamW's 2 moments; epoch end: + best weights
    code = run_child(forkserver, ["train", str(job / "recipe.yaml"), "--output", str(run_dir)],
                     job / "0-disk-full.log", file_size_limit=limit)
    log = (job / "0-disk-full.log").read_text()
    assert code == 1 and "Traceback" not in log, log
    last = log.strip().splitlines()[-1]
    assert last.startswith(f"error: {run_dir}: the disk is full") and "File too large" in last, last
    assert last.endswith(f"tuneforge train --resume {run_dir}")
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert not list((run_dir / CHECKPOINTS_DIR).glob(f"{PARTIAL_PREFIX}*"))  # the cut-short write is removed
    assert steps(run_dir) == [4, 8] and all(verify(path) is None for path in checkpoint_dirs(run_dir))
    assert not (run_dir / "model").exists()

    # 1. Mid-epoch.
    log = resume_child(forkserver, run_dir, "train-step:3", "1-train-step")
    assert "resumed from checkpoint-000002-step-8" in log
    assert steps(run_dir) == [4, 8, 9]

    # 2. While writing a checkpoint: the half-written folder is never taken for a checkpoint.
    resume_child(forkserver, run_dir, "checkpoint-write:1", "2-checkpoint-write")
    partial = list((run_dir / CHECKPOINTS_DIR).glob(f"{PARTIAL_PREFIX}*"))
    assert len(partial) == 1 and (partial[0] / "weights.safetensors").is_file()
    assert not (partial[0] / "manifest.json").exists()
    assert steps(run_dir) == [4, 8, 9]

    # 3. During validation: the end-of-epoch checkpoint was not written.
    log = resume_child(forkserver, run_dir, "validation:1", "3-validation")
    assert "resumed from checkpoint-000003-step-9" in log
    assert steps(run_dir) == [9, 12, 16]
    assert not list((run_dir / CHECKPOINTS_DIR).glob(f"{PARTIAL_PREFIX}*"))  # cleared by the next save

    # 4. The newest checkpoint truncated, the one before it garbled: resume warns about each and falls back to
    #    the third newest; then killed while saving the final model.
    oldest, middle, newest = checkpoint_dirs(run_dir)
    weights = newest / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    (middle / "manifest.json").write_text('{"format": 1, "files": {', encoding="utf-8")
    assert "bytes" in verify(newest) and "unreadable" in verify(middle)
    log = resume_child(forkserver, run_dir, "model-save:1", "4-model-save")
    assert f"checkpoint {newest.name} is unusable" in log and f"checkpoint {middle.name} is unusable" in log
    assert f"resumed from {oldest.name}" in log
    assert (run_dir / "model").is_dir() and not (run_dir / "artifacts.json").exists()  # saved, never gated

    # 5. After the model is saved, while testing: the checkpoints must still be there to resume from.
    log = resume_child(forkserver, run_dir, "after-training:1", "5-after-training")
    assert "resumed from checkpoint-000008-step-18" in log
    assert (run_dir / "artifacts.json").is_file() and not (run_dir / "eval" / "test").exists()
    assert steps(run_dir) == [12, 16, 18]

    # 6. To the end.
    resume_and_compare(run_dir, reference)
    resumes = json.loads((run_dir / "run.json").read_text())["resumes"]
    assert [r["previous_status"] for r in resumes] == ["failed"] + ["running"] * 5
    assert [s["checkpoint"] for s in resumes[3]["skipped"]] == [newest.name, middle.name]


def test_no_intact_checkpoint_is_one_clear_line(job, forkserver):
    run_dir = job / "all-damaged"
    code = run_child(forkserver, ["train", str(job / "recipe.yaml"), "--output", str(run_dir)],
                     job / "all-damaged.log", fault="train-step:5")
    assert code == -signal.SIGKILL
    assert steps(run_dir) == [4]
    checkpoint = checkpoint_dirs(run_dir)[0]
    expected_bytes = json.loads((checkpoint / "manifest.json").read_text())["files"]["state.json"]["bytes"]
    (checkpoint / "state.json").write_text("{}", encoding="utf-8")
    code, _, err = run_cli("train", "--resume", str(run_dir))
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: {run_dir}: none of its 1 checkpoint(s) is intact: checkpoint-000001-step-4: state.json has 2 bytes, "
        f"the manifest says {expected_bytes}")


def test_kill_during_export_then_export_again(job, reference, forkserver):
    out = job / "export-safetensors"
    argv = ["export", str(reference), "--format", "safetensors", "--output", str(out), "--no-benchmark"]
    code = run_child(forkserver, argv, job / "export.log", fault="export-write:1")
    assert code == -signal.SIGKILL, (job / "export.log").read_text()
    assert (out / "model.safetensors").is_file()
    with pytest.raises(UserError, match="never finished its parity check"):  # serve and predict refuse it
        load_classifier(out)
    code, out_text, err = run_cli(*argv)
    assert code == 0, err
    assert "interrupted before it finished" in err
    report = json.loads((out / "export_report.json").read_text())
    assert report["status"] == "ok" and report["parity"]["passed"] and report["integrity"]["passed"]
    exported, trained = load_file(out / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], trained[k]) for k in trained)
    assert load_classifier(out).label_names == json.loads((reference / "labels.json").read_text())


@pytest.fixture(scope="module")
def tiny_parameters(reference) -> int:
    return sum(tensor.numel() for tensor in load_file(reference / "model" / "model.safetensors").values())
