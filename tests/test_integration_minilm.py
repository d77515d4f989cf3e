"""Integration: the real offline MiniLM on a slice of real data (sst2) must learn, and every way of
reading the saved model back must agree."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli
from tuneforge.core.evaluate.calibration import read_temperature, softmax_with_temperature

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sst2_run(tmp_path_factory, shared_data):
    sst2 = shared_data("sst2")
    folder = tmp_path_factory.mktemp("sst2")
    for name, count in (("train", 600), ("test", 200)):
        lines = (sst2 / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()[:count]
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "recipe.yaml").write_text(
        "name: sst2-slice\nmodel: minilm\ndata:\n  train: train.jsonl\n  test: test.jsonl\n  max_length: 64\n"
        "method:\n  name: full\ntrain:\n  epochs: 3\n  learning_rate: 1.0e-4\n  early_stopping: null\n",
        encoding="utf-8")
    run = folder / "run"
    code, out, err = run_cli("train", str(folder / "recipe.yaml"), "--output", str(run))
    assert code == 0, err
    return run


def test_minilm_learns_sentiment(sst2_run):
    metrics = json.loads((sst2_run / "eval/test/metrics.json").read_text())
    assert metrics["n_examples"] == 200
    assert metrics["accuracy"] >= 0.7, metrics  # chance is ~0.5 on this balanced slice
    assert metrics["roc_auc"] >= 0.75


def test_pipeline_agrees_with_tuneforge_predict(sst2_run, tmp_path):
    from transformers import pipeline

    texts = ["a gorgeous , witty , seductive movie .", "the plot is nothing but boilerplate clichés from start to finish",
             "it 's a charming and often affecting journey .", "a dull , pretentious mess ."]
    pd.DataFrame({"text": texts}).to_csv(tmp_path / "in.csv", index=False)
    code, _, err = run_cli("predict", str(sst2_run), "--input", str(tmp_path / "in.csv"), "--output",
                           str(tmp_path / "out.csv"))
    assert code == 0, err
    ours = pd.read_csv(tmp_path / "out.csv")
    theirs = pipeline("text-classification", model=str(sst2_run / "model"), device="cpu")(texts, top_k=None)
    assert [t[0]["label"] for t in theirs] == list(ours["predicted_label"])
    # predict reports softmax(logits / T) with the run's calibration (calibration.json); log p = logits + const
    temperature = read_temperature(sst2_run) or 1.0
    calibrated = [float(softmax_with_temperature(np.log([[s["score"] for s in t]]), temperature).max()) for t in theirs]
    assert calibrated == pytest.approx(list(ours["confidence"]), abs=1e-4)
    assert set(ours["predicted_label"]) <= {"negative", "positive"}
