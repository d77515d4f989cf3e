"""Every method: train on the tiny model, save, load back the way `tuneforge predict` does, and get the same
predictions; mergeable methods (merge: true): the merged plain model answers as the unmerged adapter does
(atol 1e-4), checked both by the loop's save check and here, independently, with PEFT."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli, synthetic_rows, write_jsonl
from tuneforge.core.methods import method_names

MERGEABLE = ("lora", "dora", "ia3", "adalora")
NOT_MERGEABLE = ("adapter", "prefix", "prompt", "ptuning")


@pytest.fixture()
def small_job(tmp_path, tiny_model):
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(96, seed=1))
    write_jsonl(tmp_path / "test.jsonl", synthetic_rows(32, seed=2))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""name: small
model: {tiny_model}
data: {{train: train.jsonl, test: test.jsonl, max_length: 32}}
method: {{name: full}}
train: {{epochs: 2, batch_size: 16, learning_rate: 3.0e-3, warmup_ratio: 0.0, early_stopping: null}}
""", encoding="utf-8")
    return recipe


def train_method(recipe, run, method: str, *extra: str) -> None:
    code, _, err = run_cli("train", str(recipe), "--set", f"method={{name: {method}{', ' if extra else ''}"
                           f"{', '.join(extra)}}}", "--output", str(run))
    assert code == 0, err[-3000:]


def test_every_method_is_covered():
    assert set(method_names()) >= {"full", "freeze", "gradual", *MERGEABLE, *NOT_MERGEABLE}


@pytest.mark.parametrize("method", method_names())
def test_save_load_predict_parity(small_job, tmp_path, tiny_model, method):
    run = tmp_path / method
    # the tiny model is 32 wide: a bottleneck of the default 64 would be wider than the model itself
    train_method(small_job, run, method, *(["bottleneck: 8"] if method == "adapter" else []))
    check = json.loads((run / "save_check.json").read_text())
    assert check["passed"] and check["max_abs_logit_difference"] <= 1e-4, check  # trained vs saved-and-reloaded
    status = json.loads((run / "run.json").read_text())
    assert 0 < status["trainable_params"] <= status["total_params"]
    assert status["trainable_share"] == pytest.approx(status["trainable_params"] / status["total_params"])

    if method in NOT_MERGEABLE or method in MERGEABLE:
        assert (run / "adapter").is_dir()
    if method in NOT_MERGEABLE:
        # base + adapter; model/ holds the tokenizer only, so nothing mistakes it for the trained model
        assert (run / "base/config.json").is_file() and not (run / "model/config.json").exists()
        adapter_bytes = sum(p.stat().st_size for p in (run / "adapter").iterdir())
        base_bytes = sum(p.stat().st_size for p in (run / "base").iterdir())
        assert adapter_bytes < base_bytes / 2  # the adapter is small (the tiny model is tiny too)
    else:
        assert (run / "model/config.json").is_file() and not (run / "base").exists()

    # a fresh Predictor (what predict and eval use) answers as the run's own test evaluation did
    from tuneforge.core.tasks.predictor import Predictor

    table = pd.read_csv(run / "eval/test/predictions.csv")
    probabilities = Predictor(run).probabilities(table["text"].tolist())
    assert [Predictor(run).label_names[i] for i in probabilities.argmax(1)] == table["predicted"].tolist()
    np.testing.assert_allclose(probabilities.max(1), table["confidence"], atol=1e-4)

    code, out, err = run_cli("predict", str(run), "--text", "the film was great")
    assert code == 0, err
    assert out.split("\t")[0] in ("negative", "positive")

    if method in MERGEABLE:  # merge parity, checked independently of the loop's own save check
        check_merged_equals_unmerged(run, tiny_model)


def check_merged_equals_unmerged(run, tiny_model) -> None:
    """model/ (merged, plain transformers) vs base + PEFT adapter, rebuilt independently of tuneforge."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    merged = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())  # a plain model
    base = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    untrained_value = base.bert.encoder.layer[0].attention.self.value.weight.detach().clone()
    unmerged = PeftModel.from_pretrained(base, run / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    batch = tokenizer([r["text"] for r in synthetic_rows(16, seed=5)], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected, got = unmerged(**batch).logits, merged(**batch).logits
    assert torch.allclose(expected, got, atol=1e-4), (expected - got).abs().max()
    # the adapter changed the model (a vacuous merge would also pass the equality above)
    assert not torch.allclose(merged.bert.encoder.layer[0].attention.self.value.weight, untrained_value)


def test_merge_false_keeps_base_and_adapter(small_job, tmp_path):
    run = tmp_path / "lora-unmerged"
    train_method(small_job, run, "lora", "merge: false")
    assert (run / "base/config.json").is_file() and (run / "adapter/adapter_config.json").is_file()
    assert not (run / "model/config.json").exists()
    assert json.loads((run / "save_check.json").read_text())["passed"]
    write_jsonl(small_job.parent / "holdout.jsonl", synthetic_rows(24, seed=7))
    code, out, err = run_cli("eval", str(run), "--data", str(small_job.parent / "holdout.jsonl"))
    assert code == 0, err
    assert json.loads((run / "eval/holdout/metrics.json").read_text())["n_examples"] == 24


def test_merge_is_refused_where_the_method_cannot_merge(small_job, tmp_path):
    code, _, err = run_cli("train", str(small_job), "--set", "method={name: prefix, merge: true}",
                           "--output", str(tmp_path / "run"))
    assert code == 1 and "merge" in err and "unknown key" in err
