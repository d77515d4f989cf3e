"""`predict` / `eval --backend onnx` (ONNX Runtime on the run's export) answer like the PyTorch path, and
length-sorted inference batches give every row the output it gets in input-order batches."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli, synthetic_rows, write_jsonl
from tiny_runs import shared_tiny_run

from tuneforge.apps.export import export_run
from tuneforge.core.data.batching import EncodedSplit, collate
from tuneforge.core.evaluate.inference import predict_probabilities
from tuneforge.core.tasks.predictor import Predictor

ROWS = synthetic_rows(60, seed=21)


@pytest.fixture(scope="module")
def run_with_export(tmp_path_factory, tiny_model) -> Path:
    """A copy of the shared tiny run (the shared one is read-only) with its default ONNX export."""
    run = tmp_path_factory.mktemp("backend") / "run"
    shutil.copytree(shared_tiny_run(tmp_path_factory, tiny_model), run)
    export_run(run, "onnx", measure=False)  # default folder: RUN/export/onnx
    return run


def test_onnx_backend_predicts_the_same_labels_and_probabilities_as_torch(run_with_export, tmp_path):
    texts = [row["text"] for row in ROWS]
    torch_probabilities = Predictor(run_with_export).probabilities(texts)
    onnx_predictor = Predictor(run_with_export, backend="onnx")
    assert onnx_predictor.model.export_dir == run_with_export / "export" / "onnx"
    onnx_probabilities = onnx_predictor.probabilities(texts)
    assert np.array_equal(onnx_probabilities.argmax(axis=1), torch_probabilities.argmax(axis=1))
    assert np.abs(onnx_probabilities - torch_probabilities).max() < 1e-4

    # the command: same predicted labels and confidences from both backends
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": text} for text in texts])
    outputs = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / f"{backend}.csv"
        code, stdout, err = run_cli("predict", str(run_with_export), "--input", str(source), "--output", str(out),
                                    "--backend", backend)
        assert code == 0, err
        outputs[backend] = pd.read_csv(out)
    assert outputs["onnx"]["predicted_label"].tolist() == outputs["torch"]["predicted_label"].tolist()
    assert np.allclose(outputs["onnx"]["confidence"], outputs["torch"]["confidence"], atol=1e-4)

    labelled = write_jsonl(tmp_path / "labelled.jsonl", ROWS)
    code, stdout, err = run_cli("eval", str(run_with_export), "--data", str(labelled), "--backend", "onnx")
    assert code == 0, err
    assert (run_with_export / "eval" / "labelled" / "metrics.json").is_file()


def test_onnx_backend_without_an_export_names_the_export_command(tiny_model, tmp_path_factory):
    run = shared_tiny_run(tmp_path_factory, tiny_model)
    assert not (run / "export" / "onnx").exists()
    code, stdout, err = run_cli("predict", str(run), "--text", "a good film", "--backend", "onnx")
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "has no ONNX export" in lines[0] and f"tuneforge export {run} --format onnx" in lines[0]


def test_length_sorted_batches_restore_the_input_order_and_match_unsorted_batches(tiny_model):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).eval()
    texts = [row["text"] for row in ROWS]
    encoded = tokenizer(texts, truncation=True, max_length=32, padding=False, return_attention_mask=False)
    split = EncodedSplit(input_ids=encoded["input_ids"], token_type_ids=encoded.get("token_type_ids"),
                         labels=[0] * len(texts))
    assert len(set(split.lengths)) > 3  # the rows really differ in length, so sorting reorders them
    with torch.inference_mode():
        sorted_result, _ = predict_probabilities(model, split, 8, tokenizer.pad_token_id, torch.device("cpu"))
        unsorted = []
        for start in range(0, len(texts), 8):  # input-order batches: other rows, other padding
            batch = collate(split, list(range(start, min(start + 8, len(texts)))), tokenizer.pad_token_id)
            batch.pop("labels")
            unsorted.append(torch.softmax(model(**batch).logits, dim=-1))
        one_by_one = torch.cat([torch.softmax(model(input_ids=torch.tensor([ids])).logits, dim=-1)
                                for ids in split.input_ids])
    assert np.abs(sorted_result - torch.cat(unsorted).numpy()).max() < 1e-5
    assert np.abs(sorted_result - one_by_one.numpy()).max() < 1e-5  # row i of the output is text i


def test_train_records_where_its_time_went_in_run_json(tiny_model, tmp_path_factory):
    import json

    run = shared_tiny_run(tmp_path_factory, tiny_model)
    phases = json.loads((run / "run.json").read_text())["phases"]
    assert set(phases) >= {"setup", "model_load", "tokenization", "training", "validation", "saving",
                           "integrity_check", "test_evaluation", "report"}
    assert all(seconds >= 0 for seconds in phases.values()) and phases["training"] > 0
