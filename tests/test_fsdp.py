"""Two training processes under `accelerate launch` with FSDP2 (torch fully_shard, gloo on CPU): every process
holds half of each weight, yet the run takes the same steps as one process with the doubled batch — the same
validation-loss curve and the same final weights within float-summation tolerance — and the whole model that
rank 0 gathers and saves passes the integrity gate."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_bert, run_cli, synthetic_rows, write_jsonl
from test_distributed import RECIPE, free_port
from tuneforge.base.errors import UserError
from tuneforge.core.engine import distributed as distributed_module

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"
# Float sums in another order (shards reduced across processes) are the only difference from one process.
LOSS_TOLERANCE = 1e-4   # relative, per epoch's validation loss
WEIGHT_RTOL, WEIGHT_ATOL = 1e-4, 1e-5


def epoch_records(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "validation_loss" in r]


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's launcher is not on PATH")
def test_fsdp_on_two_gloo_processes_matches_one_process_and_passes_the_gate(tmp_path, capsys):
    model = make_tiny_bert(tmp_path / "tiny")
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(230, seed=1))  # 207 training rows: uneven last batch
    write_jsonl(tmp_path / "test.jsonl", synthetic_rows(40, seed=2))
    (tmp_path / "two.yaml").write_text(RECIPE.format(model=model, batch_size=8).replace("epochs: 2", "epochs: 3"),
                                       encoding="utf-8")
    (tmp_path / "one.yaml").write_text(RECIPE.format(model=model, batch_size=16).replace("epochs: 2", "epochs: 3"),
                                       encoding="utf-8")

    launched = subprocess.run(
        ["accelerate", "launch", "--config_file", str(EXAMPLES / "fsdp-cpu.yaml"), "--main_process_port",
         str(free_port()), "-m", "tuneforge", "train", "two.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert launched.returncode == 0, launched.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    sharded = runs[0]
    assert json.loads((sharded / "run.json").read_text())["processes"] == 2
    assert not (sharded / "checkpoints").exists() or not any((sharded / "checkpoints").iterdir())

    # the saved whole model passed the integrity gate (artifacts.json) and doctor finds nothing wrong
    artifacts = json.loads((sharded / "artifacts.json").read_text())
    assert artifacts, artifacts
    code, out, err = run_cli("doctor", str(sharded))
    assert code == 0, out + err

    code, _, err = run_cli("train", str(tmp_path / "one.yaml"), "--output", str(tmp_path / "one"))
    assert code == 0, err
    two_epochs, one_epochs = epoch_records(sharded), epoch_records(tmp_path / "one")
    assert [r["epoch"] for r in two_epochs] == [1, 2, 3]
    assert [r["step"] for r in two_epochs] == [r["step"] for r in one_epochs]
    for sharded_epoch, single_epoch in zip(two_epochs, one_epochs):
        assert sharded_epoch["validation_loss"] == pytest.approx(single_epoch["validation_loss"], rel=LOSS_TOLERANCE)
    assert one_epochs[-1]["validation_loss"] < one_epochs[0]["validation_loss"]  # the curve moved: a real check

    single = load_file(tmp_path / "one" / "model" / "model.safetensors")
    whole = load_file(sharded / "model" / "model.safetensors")
    assert set(whole) == set(single)
    initial = load_file(model / "model.safetensors")
    moved = max(float((single[k] - initial[k.removeprefix("bert.")]).abs().max())
                for k in single if k.startswith("bert.encoder"))
    assert moved > 1e-3  # training changed the weights, so agreement below means something
    for name in single:
        torch.testing.assert_close(whole[name], single[name], rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL)
    with capsys.disabled():
        losses = [(round(sharded_epoch["validation_loss"], 6), round(single_epoch["validation_loss"], 6))
                  for sharded_epoch, single_epoch in zip(two_epochs, one_epochs)]
        print(f"\nFSDP2 x2 vs 1 process, validation loss per epoch (sharded, single): {losses}; largest relative "
              f"difference {max(abs(a - b) / abs(b) for a, b in losses):.2e}; largest weight difference "
              f"{max(float((whole[n] - single[n]).abs().max()) for n in single):.2e}")


@pytest.mark.parametrize("settings,message", [
    ({"FSDP_VERSION": "1"}, "fsdp_version: 2"),
    ({"FSDP_VERSION": "2", "FSDP_OFFLOAD_PARAMS": "true"}, "fsdp_offload_params"),
    ({"FSDP_VERSION": "2", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, "fsdp_cpu_ram_efficient_loading"),
    ({"FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"}, "train.gradient_checkpointing"),
])
def test_fsdp_settings_tuneforge_does_not_run_are_refused_in_one_line(monkeypatch, settings, message):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for variable, value in settings.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(UserError, match="not supported yet") as refused:
        distributed_module.distributed.__wrapped__()
    assert message in str(refused.value)


def test_deepspeed_refusal_says_why(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(UserError, match="DeepSpeed: not supported yet: .*owns the optimizer.*use FSDP"):
        distributed_module.distributed.__wrapped__()


def test_the_frame_for_the_gathered_model_costs_no_weight_memory_and_keeps_ties():
    embedding = torch.nn.Embedding(10, 4)
    model = torch.nn.Sequential(embedding, torch.nn.Linear(4, 10))
    model[1].weight = embedding.weight  # tied, as a language model's head and input embeddings are
    model.register_buffer("scale", torch.ones(3))
    frame = distributed_module.meta_copy(model)
    assert {p.device.type for p in frame.parameters()} == {"meta"}
    assert frame[1].weight is frame[0].weight
    assert frame.scale.device.type == "cpu" and model[0].weight.device.type == "cpu"


def test_sharded_runs_write_no_checkpoints_and_refuse_resume():
    from tuneforge.core.engine.distributed import Distributed

    assert Distributed().writes_checkpoints and not Distributed(sharded=True).writes_checkpoints
    Distributed().check_can_resume()
    with pytest.raises(UserError, match="--resume under FSDP: not supported yet"):
        Distributed(sharded=True).check_can_resume()
