"""`tuneforge doctor` (machine checks, known-bad combinations, the preflight), the run manifest and
`tuneforge runs`, on the tiny random BERT."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json

import pytest
import torch
from torch import nn

from conftest import run_cli
from tiny_runs import shared_tiny_run
from tuneforge.apps.doctor import checks as doctor
from tuneforge.apps.doctor import preflight


def test_doctor_without_a_recipe_reports_the_machine():
    code, out, _ = run_cli("doctor")
    assert code == 0, out
    assert "tuneforge:" in out and "torch " in out and "cpu matmul: 256x256, 1 thread: fp32" in out
    assert "disk:" in out and "GB free" in out and "gpu" in out
    assert "passed: 0 failure(s)" in out


def test_doctor_preflight_passes_on_a_good_recipe(tiny_job, tmp_path):
    code, out, _ = run_cli("doctor", str(tiny_job), "--steps", "5", "--json", str(tmp_path / "doctor.json"))
    assert code == 0, out
    assert "ok    recipe: valid" in out
    assert "ok    preflight loss: finite and falling" in out
    assert "ok    gradients: all" in out and "non-zero gradients" in out
    measured = json.loads((tmp_path / "doctor.json").read_text())["measurements"]["preflight"]
    assert measured["loss_after"] < measured["loss_before"] and len(measured["train_losses"]) == 5


def test_doctor_preflight_with_a_frozen_body_checks_frozen_tensors(tiny_job):
    code, out, _ = run_cli("doctor", str(tiny_job), "--set", "method.name=freeze", "--steps", "3")
    assert code == 0, out
    assert "ok    frozen: none of the" in out


def test_doctor_preflight_with_lora_counts_gradients_over_every_step(tiny_job):
    # LoRA's B starts at zero, so A gets no gradient in the first backward; only a check over the steps passes.
    code, out, _ = run_cli("doctor", str(tiny_job), "--set", "method.name=lora", "--steps", "3")
    assert code == 0, out
    assert "non-zero gradients in 3 backward pass(es)" in out and "ok    frozen: none of the" in out


def test_doctor_warns_about_bf16_on_a_cpu_without_native_bf16(tiny_job, monkeypatch):
    monkeypatch.setattr(doctor, "cpu_flags", lambda cpuinfo=None: {"avx2", "fma"})
    code, out, _ = run_cli("doctor", str(tiny_job), "--set", "train.precision=bf16", "--steps", "3")
    assert code == 0, out  # a warning, not a failure: bf16 works, slowly
    warning = next(line for line in out.splitlines() if line.startswith("  warn  train.precision"))
    assert "without native bf16" in warning and "slower than fp32 here" in warning
    assert "fix: --set train.precision=fp32" in out
    assert "train.precision: forward + backward of this model on the preflight batch: bf16" in out


def test_doctor_fails_fp16_on_a_cpu_with_the_fix(tiny_job):
    if torch.cuda.is_available():
        pytest.skip("fp16 is fine with a GPU")
    code, out, _ = run_cli("doctor", str(tiny_job), "--set", "train.precision=fp16")
    assert code == 1
    assert "fail  train.precision: fp16 needs a CUDA GPU" in out and "fix: --set train.precision=fp32" in out


def test_doctor_fails_when_the_loss_cannot_fall(tiny_job):
    code, out, _ = run_cli("doctor", str(tiny_job), "--set", "train.learning_rate=1.0e-12", "--steps", "3")
    assert code == 1
    assert "fail  preflight loss: did not fall" in out and "fix: raise train.learning_rate" in out


def test_gradient_check_finds_dead_and_leaking_tensors():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused, self.frozen = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(2, 2)

        def forward(self, x):
            return self.used(x) + self.frozen(x)

    model = Model()
    model.frozen.requires_grad_(False)
    model(torch.ones(1, 2)).sum().backward()
    model.frozen.weight.grad = torch.ones(2, 2)  # what a method that forgot to detach would leave
    report = doctor.Report()
    preflight.check_gradients(report, model, {n: p for n, p in model.named_parameters() if p.requires_grad}, None)
    failures = [c.detail for c in report.failures]
    assert any("got no or all-zero gradient: unused.weight, unused.bias" in d for d in failures)
    assert any("frozen tensors got gradients: frozen.weight" in d for d in failures)


def test_cpu_flags_from_cpuinfo_text():
    text = "processor: 0\nmodel name: Test CPU\nflags: fpu avx2 avx512f amx_bf16 amx_tile\n"
    flags = doctor.cpu_flags(text)
    assert {"avx2", "avx512f", "amx_bf16"} <= flags and doctor.has_native_bf16(flags)
    assert doctor.cpu_model(text) == "Test CPU"
    assert not doctor.has_native_bf16(doctor.cpu_flags("flags: fpu avx2\n"))


def test_doctor_refuses_a_folder_that_is_not_a_run(tmp_path):
    code, out, _ = run_cli("doctor", str(tmp_path))
    assert code == 1 and "is not a run folder (it has neither run.json nor artifacts.json)" in out
    assert "cpu matmul" not in out  # a folder is checked as a run, not as a recipe on this machine


def test_pick_rows_takes_every_label():
    assert preflight.pick_rows([0, 0, 0, 0, 1, 1, 2], 4) == [0, 1, 4, 6]


# ----------------------------------------------------------------------------- manifest and run list


def test_manifest_and_runs_table(tmp_path_factory, tiny_model):
    run = shared_tiny_run(tmp_path_factory, tiny_model)
    manifest = json.loads((run / "manifest.json").read_text())
    train_file = run.parent / "train.jsonl"
    assert manifest["data"]["train"]["sha256"] == hashlib.sha256(train_file.read_bytes()).hexdigest()
    assert manifest["data"]["train"]["rows"] == 240 and manifest["data"]["test"]["rows"] == 80
    assert manifest["seed"] == 42 and manifest["status"] == "completed" and manifest["ended"]
    assert manifest["libraries"]["torch"] == importlib.metadata.version("torch")
    assert len(manifest["recipe_sha256"]) == 64 and manifest["resumed_from"] is None
    assert manifest["platform"]["python"] and manifest["tuneforge"]["version"]

    # a second folder beside it: a failed run without metrics sorts last by value
    failed = run.parent / "broken-run"
    failed.mkdir(exist_ok=True)
    (failed / "run.json").write_text(json.dumps({"status": "failed", "task": "classification", "model": "m",
                                                 "method": "lora", "minutes": 0.1, "started": "2020-01-01T00:00:00"}))
    code, out, err = run_cli("runs", str(run.parent), "--sort", "value", "--desc")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:5] == ["name", "task", "model", "method", "metric"]
    assert lines[1].startswith("run ") and "completed" in lines[1] and "f1_macro (test)" in lines[1]
    assert lines[2].startswith("broken-run") and "failed" in lines[2]

    code, out, _ = run_cli("runs", str(run.parent), "--json")
    rows = {row["name"]: row for row in json.loads(out)}
    status = json.loads((run / "run.json").read_text())
    assert rows["run"]["value"] == pytest.approx(status["test"]["f1_macro"])
    assert rows["run"]["minutes"] == status["minutes"] and rows["broken-run"]["value"] is None
    assert rows["run"]["checked"] == "passed" and rows["broken-run"]["checked"] is None  # from artifacts.json

    code, _, err = run_cli("runs", str(run.parent), "--sort", "speed")
    assert code == 1 and "cannot sort by 'speed'" in err
