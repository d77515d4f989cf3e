"""End to end on the tiny model: train writes the run folder; eval and predict read it back."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli, synthetic_rows, write_jsonl
from tuneforge.core.evaluate.calibration import read_temperature, softmax_with_temperature


def test_train_writes_complete_run_folder_and_learns(tiny_job, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli("train", str(tiny_job), "--output", str(run))
    assert code == 0, err
    for name in ("config.yaml", "labels.json", "metrics.jsonl", "run.json", "model/config.json",
                 "model/model.safetensors", "eval/test/metrics.json", "eval/test/confusion_matrix.png",
                 "eval/test/predictions.csv", "eval/test/errors.csv"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "eval/test/metrics.json").read_text())
    for key in ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc", "per_class"):
        assert key in metrics
    assert metrics["accuracy"] > 0.8, metrics  # chance is 0.5
    assert set(metrics["per_class"]) == {"negative", "positive"}
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "completed"
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in epochs if "validation_accuracy" in r] == [1, 2, 3, 4, 5, 6]
    model_config = json.loads((run / "model/config.json").read_text())
    assert model_config["id2label"] == {"0": "negative", "1": "positive"}
    assert "test" in out and "accuracy" in out

    errors = pd.read_csv(run / "eval/test/errors.csv")
    assert list(errors["confidence"]) == sorted(errors["confidence"], reverse=True)

    # predict: a file in, the same rows out plus two columns; and one text
    rows = synthetic_rows(20, seed=9)
    write_jsonl(tmp_path / "new.jsonl", [{"id": i, "text": r["text"]} for i, r in enumerate(rows)])
    code, out, err = run_cli("predict", str(run), "--input", str(tmp_path / "new.jsonl"), "--output",
                             str(tmp_path / "out.csv"))
    assert code == 0, err
    predicted = pd.read_csv(tmp_path / "out.csv")
    assert list(predicted.columns) == ["id", "text", "predicted_label", "confidence"]
    assert (predicted["predicted_label"] == [r["label"] for r in rows]).mean() > 0.8
    code, out, err = run_cli("predict", str(run), "--text", "the film was great")
    assert code == 0, err
    assert out.split("\t")[0] == "positive"

    # eval on another labelled file
    write_jsonl(tmp_path / "extra.jsonl", rows)
    code, out, err = run_cli("eval", str(run), "--data", str(tmp_path / "extra.jsonl"))
    assert code == 0, err
    assert json.loads((run / "eval/extra/metrics.json").read_text())["n_examples"] == 20

    # the pipeline of transformers reads model/ and agrees with tuneforge predict
    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(run / "model"), device="cpu")
    answers = classifier([r["text"] for r in rows], top_k=None)
    assert [a[0]["label"] for a in answers] == list(predicted["predicted_label"])
    # predict reports softmax(logits / T) with the run's calibration (calibration.json); log p = logits + const
    temperature = read_temperature(run) or 1.0
    calibrated = [float(softmax_with_temperature(np.log([[s["score"] for s in a]]), temperature).max()) for a in answers]
    assert calibrated == pytest.approx(list(predicted["confidence"]), abs=1e-4)


def test_existing_run_is_never_overwritten(tiny_job, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("precious")
    code, _, err = run_cli("train", str(tiny_job), "--output", str(run))
    assert code == 1
    assert "already exists and is not empty" in err and "never overwrites" in err
    assert (run / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in run.iterdir()) == ["keep.txt"]


def test_validate_checks_everything_without_training(tiny_job):
    code, out, err = run_cli("validate", str(tiny_job))
    assert code == 0, err
    assert "valid" in out and "2 labels" in out
