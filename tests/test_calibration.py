"""Calibrated confidences (``train.calibrate``): temperature scaling lowers the validation NLL of an over-confident
model without changing a single predicted label; ECE on a hand-checked example; a tiny run writes
calibration.json and the ECE before/after, and predict/eval/load_classifier report softmax(logits / T)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli, synthetic_rows, write_jsonl
from tuneforge.apps.export.runtime import load_classifier
from tuneforge.core.evaluate.calibration import (ECE_BINS, calibration_record, expected_calibration_error,
                                                 fit_temperature, negative_log_likelihood, read_temperature,
                                                 reliability_bins, softmax_with_temperature)


def overconfident_logits(rows: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of a model that is right ~70% of the time but whose logits are 6x too large: over-confident."""
    rng = np.random.default_rng(seed)
    gold = rng.integers(0, classes, rows)
    honest = rng.normal(0, 1, (rows, classes))
    honest[np.arange(rows), gold] += 1.5
    return 6.0 * honest, gold


def test_temperature_scaling_lowers_validation_nll_and_never_changes_labels():
    logits, gold = overconfident_logits(600, 4, seed=0)
    temperature = fit_temperature(logits, gold)
    assert temperature > 2, temperature  # an over-confident model is softened
    before, after = negative_log_likelihood(logits, gold), negative_log_likelihood(logits, gold, temperature)
    assert after < 0.8 * before, (before, after)
    # the fitted T is the minimum: a step either way is worse
    assert after <= negative_log_likelihood(logits, gold, temperature * 1.05)
    assert after <= negative_log_likelihood(logits, gold, temperature / 1.05)
    calibrated = softmax_with_temperature(logits, temperature)
    assert (calibrated.argmax(axis=1) == logits.argmax(axis=1)).all()
    assert np.allclose(calibrated.sum(axis=1), 1, atol=1e-5)
    plain = softmax_with_temperature(logits)
    assert expected_calibration_error(calibrated, gold) < expected_calibration_error(plain, gold) / 2

    # an under-confident model (logits too small) is sharpened: T < 1, labels unchanged too
    small = logits / 30
    sharpen = fit_temperature(small, gold)
    assert sharpen < 1 and negative_log_likelihood(small, gold, sharpen) < negative_log_likelihood(small, gold)
    assert (softmax_with_temperature(small, sharpen).argmax(axis=1) == small.argmax(axis=1)).all()


def test_ece_and_reliability_bins_on_a_hand_checked_example():
    # 4 rows, 2 classes. Confidences 0.9, 0.9 (bin (0.8667, 0.9333]), 0.6, 0.6 (bin (0.5333, 0.6]).
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    gold = np.array([0, 0, 0, 0])  # right, wrong, right, wrong
    # each bin: accuracy 0.5; |0.5 - 0.9| = 0.4 and |0.5 - 0.6| = 0.1, each half of the rows: ECE 0.25
    assert expected_calibration_error(probabilities, gold) == pytest.approx(0.25)
    bins = reliability_bins(probabilities, gold)
    assert len(bins) == ECE_BINS == 15
    filled = [b for b in bins if b["count"]]
    assert [(b["count"], b["accuracy"]) for b in filled] == [(2, 0.5), (2, 0.5)]
    assert [b["mean_confidence"] for b in filled] == pytest.approx([0.6, 0.9])
    assert filled[0]["lower"] < 0.6 <= filled[0]["upper"] and filled[1]["lower"] < 0.9 <= filled[1]["upper"]
    # perfectly calibrated: 10 rows at confidence 0.8 with 8 right
    probabilities = np.tile([0.8, 0.2], (10, 1))
    assert expected_calibration_error(probabilities, np.array([0] * 8 + [1] * 2)) == pytest.approx(0.0, abs=1e-12)


def test_degenerate_validation_splits_keep_the_plain_softmax():
    logits, gold = overconfident_logits(200, 3, seed=1)
    few = calibration_record(logits[:5], gold[:5])
    assert few["fitted"] is False and few["temperature"] == 1.0 and "fewer than" in few["reason"]
    right = logits.argmax(axis=1)  # a validation split the model gets all right: NLL falls forever as T -> 0
    perfect = calibration_record(logits, right)
    assert perfect["fitted"] is False and "no error" in perfect["reason"]
    fitted = calibration_record(logits, gold, logits[:50], gold[:50])
    assert fitted["fitted"] and fitted["validation"]["nll_after"] < fitted["validation"]["nll_before"]
    assert set(fitted["test"]) >= {"ece_before", "ece_after", "bins_before", "bins_after"}


def noisy_rows(count: int, seed: int) -> list[dict]:
    """Synthetic sentiment rows with every fifth label flipped: the model makes errors to calibrate on."""
    rows = synthetic_rows(count, seed=seed)
    for row in rows[::5]:
        row["label"] = "negative" if row["label"] == "positive" else "positive"
    return rows


def tiny_calibrated_job(folder, tiny_model, extra_train: str = ""):
    """The tiny sentiment job with label noise, a validation split of 80 rows and 4 epochs."""
    folder.mkdir(parents=True, exist_ok=True)
    write_jsonl(folder / "train.jsonl", noisy_rows(240, seed=1))
    write_jsonl(folder / "validation.jsonl", noisy_rows(80, seed=3))
    write_jsonl(folder / "test.jsonl", noisy_rows(80, seed=2))
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""name: calibrated
model: {tiny_model}
data:
  train: train.jsonl
  validation: validation.jsonl
  test: test.jsonl
  max_length: 32
method:
  name: full
train:
  epochs: 4
  batch_size: 16
  learning_rate: 3.0e-3
  warmup_ratio: 0.0
  early_stopping: null
  num_threads: 1
{extra_train}""", encoding="utf-8")
    return recipe


def test_train_writes_calibration_and_predict_reports_calibrated_confidences(tmp_path, tiny_model):
    recipe = tiny_calibrated_job(tmp_path / "job", tiny_model)
    run = tmp_path / "run"
    code, out, err = run_cli("train", str(recipe), "--output", str(run))
    assert code == 0, err
    record = json.loads((run / "calibration.json").read_text())
    assert record["fitted"], record
    temperature = record["temperature"]
    assert temperature != 1.0 and read_temperature(run) == pytest.approx(temperature)
    assert record["validation"]["nll_after"] <= record["validation"]["nll_before"]
    assert record["ece_bins"] == 15 and len(record["test"]["bins_after"]) == 15
    status = json.loads((run / "run.json").read_text())
    for split in ("validation", "test"):
        assert status["calibration"][split]["ece_before"] == pytest.approx(record[split]["ece_before"])
        assert status["calibration"][split]["ece_after"] == pytest.approx(record[split]["ece_after"])
    metrics = json.loads((run / "eval/test/metrics.json").read_text())
    assert metrics["ece"] == pytest.approx(record["test"]["ece_after"], abs=1e-6)
    assert metrics["ece_before_calibration"] == pytest.approx(record["test"]["ece_before"])
    assert metrics["temperature"] == pytest.approx(temperature)
    assert status["test"]["ece"] == pytest.approx(metrics["ece"])
    report = (run / "report.html").read_text()
    assert 'id="calibration"' in report and "reliability diagram" in report

    # predict: softmax(logits / T) of the saved model's own logits, the same labels as the plain argmax
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = synthetic_rows(20, seed=9)
    texts = [r["text"] for r in rows]
    write_jsonl(tmp_path / "new.jsonl", [{"text": t} for t in texts])
    code, _, err = run_cli("predict", str(run), "--input", str(tmp_path / "new.jsonl"), "--output",
                           str(tmp_path / "out.csv"))
    assert code == 0, err
    predicted = pd.read_csv(tmp_path / "out.csv")
    tokenizer = AutoTokenizer.from_pretrained(run / "model")
    model = AutoModelForSequenceClassification.from_pretrained(run / "model").eval()
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer([t], return_tensors="pt")).logits for t in texts]).numpy()
    expected = softmax_with_temperature(logits, temperature)
    assert list(predicted["confidence"]) == pytest.approx(expected.max(axis=1).tolist(), abs=1e-5)
    labels = json.loads((run / "labels.json").read_text())
    assert list(predicted["predicted_label"]) == [labels[i] for i in logits.argmax(axis=1)]
    assert not np.allclose(expected.max(axis=1), softmax_with_temperature(logits).max(axis=1), atol=1e-3)

    # eval writes the calibrated confidences (and their ECE) too; serve's loader applies the same T
    write_jsonl(tmp_path / "extra.jsonl", rows)
    code, _, err = run_cli("eval", str(run), "--data", str(tmp_path / "extra.jsonl"))
    assert code == 0, err
    evaluated = pd.read_csv(run / "eval/extra/predictions.csv")
    assert list(evaluated["confidence"]) == pytest.approx(expected.max(axis=1).tolist(), abs=1e-5)
    assert "ece" in json.loads((run / "eval/extra/metrics.json").read_text())
    served = load_classifier(run)
    assert served.temperature == pytest.approx(temperature)
    assert np.allclose(served.probabilities(texts), expected, atol=1e-5)

    # a run without calibration.json (trained before it existed) predicts the plain softmax, as it always did
    old = tmp_path / "old-run"
    shutil.copytree(run, old)
    (old / "calibration.json").unlink()
    code, out, err = run_cli("predict", str(old), "--text", texts[0])
    assert code == 0, err
    assert float(out.split("\t")[1].split()[0]) == pytest.approx(softmax_with_temperature(logits[:1]).max(), abs=1e-4)


def test_calibrate_false_skips_it(tmp_path, tiny_model):
    recipe = tiny_calibrated_job(tmp_path / "job", tiny_model, extra_train="  calibrate: false\n")
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(recipe), "--output", str(run), "--set", "train.epochs=1")
    assert code == 0, err
    assert not (run / "calibration.json").exists()
    assert "calibration" not in json.loads((run / "run.json").read_text())
    metrics = json.loads((run / "eval/test/metrics.json").read_text())
    assert "ece" in metrics and "ece_before_calibration" not in metrics
    assert 'id="calibration"' not in (run / "report.html").read_text()
