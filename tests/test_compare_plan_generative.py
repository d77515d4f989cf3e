"""`tuneforge compare` and `tuneforge plan` on generative recipes (task sft), on a tiny random Llama."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import run_cli
from generative_fixtures import make_tiny_llama, write_sft_job

from tuneforge.apps.compare import DEFAULT_METHODS, MethodResult, table_markdown, task_methods
from tuneforge.apps.plan import activation_bytes
from tuneforge.base.errors import UserError
from tuneforge.core.tasks import task_for
from tuneforge.core.tasks.generative import TokenLoss


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def sft_job(tmp_path, tiny_llama) -> Path:
    return write_sft_job(tmp_path / "job", tiny_llama, method="lora", epochs=1)


def test_compare_on_sft_writes_loss_and_perplexity_per_method(sft_job, tmp_path):
    folder = tmp_path / "cmp"
    code, out, err = run_cli("compare", str(sft_job), "--methods", "lora,ia3,prompt", "--output", str(folder))
    assert code == 0, err
    for name in ("compare.md", "compare.json", "compare.png", "logs/ia3.log", "lora/run.json", "ia3/run.json",
                 "prompt/run.json"):
        assert (folder / name).exists(), name
    summary = json.loads((folder / "compare.json").read_text())
    assert summary["task"] == "sft" and summary["main_metric"] == "loss"
    rows = {row["method"]: row for row in summary["methods"]}
    assert list(rows) == ["lora", "ia3", "prompt"]
    for name, row in rows.items():
        assert row["status"] == "completed", row
        assert row["task"] == "sft" and row["epochs_trained"] == 1
        assert row["train_seconds"] > 0 and row["samples_per_s"] > 0
        assert {"loss", "perplexity"} <= set(row["validation"])
        assert {"perplexity", "rouge_l", "exact_match"} <= set(row["test"])
        assert row["base_validation"]["loss"] > 0
        assert f"name: {name}" in (folder / name / "config.yaml").read_text()
    # the recipe's rate for its own method (lora), each other method's default
    assert rows["lora"]["learning_rate"] == 0.01 and rows["prompt"]["learning_rate"] == 1e-2
    table = (folder / "compare.md").read_text()
    assert ("| epochs | val loss | val perplexity | test perplexity | test ROUGE-L | test exact match "
            "| learning rate |") in table
    assert "accuracy" not in table.split("## Notes")[0]
    best = min(rows.values(), key=lambda row: row["validation"]["loss"])
    assert f"by validation loss (lower is better): {best['method']} " in table
    assert "the untrained model: validation loss" in table
    assert "| val loss |" in out  # the table is printed too


def test_compare_refuses_methods_the_task_does_not_support(sft_job, tmp_path):
    code, _, err = run_cli("compare", str(sft_job), "--methods", "lora,adapter", "--output", str(tmp_path / "c"))
    assert code == 1 and "adapter is not supported for task sft" in err
    assert "full, freeze, lora" in err  # the supported ones are named
    assert not (tmp_path / "c").exists()


def test_default_methods_are_those_the_task_supports():
    sft = task_for("sft")
    assert task_methods(sft, None) == ["full", "freeze", "lora", "prefix", "prompt"]
    assert task_methods(task_for("masked-lm"), None) == ["full", "freeze", "lora"]
    assert task_methods(task_for("classification"), list(DEFAULT_METHODS)) == list(DEFAULT_METHODS)
    assert task_methods(sft, ["ia3", "lora"]) == ["ia3", "lora"]
    with pytest.raises(UserError, match="adapter is not supported for task sft"):
        task_methods(sft, ["adapter"])


def test_language_model_table_columns():
    done = MethodResult(method="lora", status="completed", run_dir="x", learning_rate=1e-3, task="causal-lm",
                        trainable_params=1000, total_params=10000, trainable_share=0.1, peak_memory_mb=500,
                        train_seconds=3, samples_per_s=10, epochs_trained=2,
                        validation={"loss": 2.5, "perplexity": 12.18}, test={"loss": 2.6, "perplexity": 13.46})
    failed = MethodResult(method="prefix", status="failed", run_dir="y", learning_rate=1e-2, task="causal-lm",
                          error="boom")
    lines = table_markdown([done, failed]).splitlines()
    # causal-lm generates nothing: no ROUGE-L / exact match columns
    assert lines[0].endswith("| epochs | val loss | val perplexity | test perplexity | learning rate |")
    assert lines[2] == "| lora | 1.0k | 10.00 | 500 | 3 | 10.0 | 2 | 2.5000 | 12.18 | 13.46 | 0.001 |"
    assert lines[3].startswith("| prefix | failed: boom |")


def test_plan_on_sft_estimates_each_supported_method(sft_job, tmp_path):
    code, out, err = run_cli("plan", str(sft_job), "--methods", "full,lora,ia3,prompt,adapter", "--memory-gb", "8",
                             "--json", str(tmp_path / "plan.json"))
    assert code == 0, err
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["task"] == "sft" and "adapter" in plan["left_out"]
    rows = {row["method"]: row for row in plan["methods"]}
    assert set(rows) == {"full", "lora", "ia3", "prompt"} and all(row["error"] is None for row in rows.values())
    full = rows["full"]
    assert full["trainable_params"] == full["total_params"] > rows["lora"]["trainable_params"] > 0
    assert full["memory"]["optimizer"] == 2 * full["memory"]["gradients"] == 8 * full["trainable_params"]
    for row in rows.values():
        assert row["memory"]["activations"] > 0 and row["epoch_seconds"] > 0 and row["step_seconds"] > 0
    assert plan["recommendation"]["method"] in rows
    assert "plan for tiny-sft (task sft)" in out and "recommended: " in out
    assert "adapter   left out: not supported for task sft" in out


def test_plan_refuses_when_no_method_is_supported(sft_job):
    code, _, err = run_cli("plan", str(sft_job), "--methods", "adapter,gradual")
    assert code == 1 and "not supported for task sft" in err


def test_activations_count_a_language_models_logits(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    batch, width, vocab = 2, 12, model.config.vocab_size
    ids = torch.randint(4, vocab, (batch, width), generator=torch.Generator().manual_seed(0))
    saved, outside, largest_block, _ = activation_bytes(
        model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}, TokenLoss(causal=True))
    logits = batch * width * vocab * 4
    # the logits (held until backward), their gradient, and the token loss's log-softmax over the shifted logits
    assert outside >= 2 * logits + batch * (width - 1) * vocab * 4
    assert saved > outside and largest_block > 0  # gradients flow through the blocks: they save activations too
