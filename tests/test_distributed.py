"""Two training processes under `accelerate launch` (DDP, gloo on CPU) take the same steps as one process with
the doubled batch, and only rank 0 writes the run folder."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_tiny_bert, run_cli, synthetic_rows, write_jsonl
from tuneforge.base.errors import UserError
from tuneforge.core.engine import distributed as distributed_module
from tuneforge.core.engine.distributed import Distributed

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "accelerate"

RECIPE = """name: ddp
model: {model}
data: {{train: train.jsonl, test: test.jsonl, max_length: 32}}
method: {{name: full}}
train:
  epochs: 2
  batch_size: {batch_size}
  learning_rate: 3.0e-3
  warmup_ratio: 0.0
  dropout: 0.0
  early_stopping: null
  num_threads: 1
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's launcher is not on PATH")
def test_two_gloo_processes_match_one_process_with_the_doubled_batch(tmp_path):
    model = make_tiny_bert(tmp_path / "tiny")
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(230, seed=1))  # 207 training rows: uneven last batch
    write_jsonl(tmp_path / "test.jsonl", synthetic_rows(40, seed=2))
    (tmp_path / "two.yaml").write_text(RECIPE.format(model=model, batch_size=8), encoding="utf-8")
    (tmp_path / "one.yaml").write_text(RECIPE.format(model=model, batch_size=16), encoding="utf-8")

    launched = subprocess.run(
        ["accelerate", "launch", "--config_file", str(EXAMPLES / "ddp-cpu.yaml"), "--main_process_port", str(free_port()),
         "-m", "tuneforge", "train", "two.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert launched.returncode == 0, launched.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 created no folder of its own
    two = runs[0]
    assert json.loads((two / "run.json").read_text())["processes"] == 2
    epochs = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if "validation_accuracy" in r] == [1, 2]  # one writer, no duplicates
    assert launched.stdout.count("finished in") == 1  # only rank 0 prints the summary

    code, _, err = run_cli("train", str(tmp_path / "one.yaml"), "--output", str(tmp_path / "one"))
    assert code == 0, err
    single, double = load_file(tmp_path / "one" / "model" / "model.safetensors"), load_file(
        two / "model" / "model.safetensors")
    initial = load_file(model / "model.safetensors")
    moved = max(float((single[k] - initial[k.removeprefix("bert.")]).abs().max())
                for k in single if k.startswith("bert.encoder"))
    assert moved > 1e-3  # training changed the weights, so agreement below means something
    for name in single:
        torch.testing.assert_close(double[name], single[name], rtol=1e-4, atol=1e-5)
    steps = [json.loads(line)["step"] for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [r["step"] for r in epochs]


def test_each_process_trains_on_its_share_weighted_to_the_global_mean():
    class Two:
        num_processes, process_index = 2, 1

    shares, weights = Distributed(Two()).shard([[0, 1, 2, 3], [4, 5, 6], [7]])
    assert shares == [[2, 3], [5, 6]]  # rank 1's halves; a batch of 1 cannot be split between 2 and is dropped
    assert weights == [1.0, 2 * 2 / 3]  # 2 of 3 examples: its mean counts for 2/3 of the global sum
    assert Distributed().shard([[0, 1]]) == ([[0, 1]], None)


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharding_engines_are_refused_clearly(monkeypatch, variable):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(variable, "true")
    with pytest.raises(UserError, match="not supported yet"):
        distributed_module.distributed.__wrapped__()


def test_example_accelerate_configs_load():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {path.name: load_config_from_file(str(path)).distributed_type.value
             for path in EXAMPLES.glob("*.yaml")}
    assert kinds == {"ddp-cpu.yaml": "MULTI_GPU", "ddp-multi-gpu.yaml": "MULTI_GPU", "multi-node.yaml": "MULTI_GPU",
                     "fsdp.yaml": "FSDP", "fsdp-cpu.yaml": "FSDP", "deepspeed-zero2.yaml": "DEEPSPEED"}
