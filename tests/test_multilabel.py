"""task: multilabel on the tiny BERT: list and delimited label columns, BCE, metrics, tuned thresholds,
predict (labels + probabilities), eval, and a model that pipeline() reads with sigmoid scores."""

from __future__ import annotations

import json
import random

import numpy as np
import pandas as pd
import pytest

from conftest import FILLER, NEGATIVE, POSITIVE, run_cli, tiny_recipe_text, write_jsonl
from tuneforge.base.errors import UserError


def multilabel_rows(count: int, seed: int) -> list[dict]:
    """One sentiment word among fillers (label 'positive' or 'negative', as in the classification tests) and, in
    about half the rows, the word 'card' (label 'card' too): one or two labels per row."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        words = rng.sample(FILLER, rng.randint(2, 7))
        words.insert(rng.randint(0, len(words)), rng.choice(POSITIVE if positive else NEGATIVE))
        labels = ["positive" if positive else "negative"]
        if rng.random() < 0.5:
            words.insert(rng.randint(0, len(words)), "card")
            labels.append("card")
        rows.append({"text": " ".join(words), "labels": labels})
    return rows


def recipe_text(model, extra: str = "") -> str:
    return tiny_recipe_text(model, name="tiny-multilabel", task="multilabel", data_keys="  label_column: labels\n",
                            extra=extra)


def test_metrics_and_thresholds_from_known_values():
    from tuneforge.core.evaluate.multilabel import multilabel_metrics, tune_thresholds

    gold = np.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    probabilities = np.array([[0.9, 0.2], [0.6, 0.4], [0.1, 0.45], [0.2, 0.1]])
    at_half = multilabel_metrics(gold, probabilities, ["a", "b"], 0.5)
    assert at_half["subset_accuracy"] == pytest.approx(0.5)  # rows 1 and 4 exactly right
    assert at_half["hamming_loss"] == pytest.approx(2 / 8)
    assert at_half["per_class"]["b"]["recall"] == 0.0
    tuned = tune_thresholds(gold, probabilities, "per_label")
    assert 0.2 < tuned[1] <= 0.4  # b: every positive above, every negative below
    after = multilabel_metrics(gold, probabilities, ["a", "b"], tuned)
    assert after["f1_macro"] == pytest.approx(1.0) and after["subset_accuracy"] == pytest.approx(1.0)
    assert tune_thresholds(gold, probabilities, 0.3).tolist() == [0.3, 0.3]
    assert len(set(tune_thresholds(gold, probabilities, "global").tolist())) == 1


def test_delimited_labels_and_unknown_label_errors(tmp_path):
    from tuneforge.base.recipe import DataConfig
    from tuneforge.core.data.multilabel import load_multilabel_data

    pd.DataFrame({"text": ["a b", "c d", "e f", "g h"], "tags": ["x|y", "y", "y | x", "x"]}).to_csv(
        tmp_path / "t.csv", index=False)
    with pytest.raises(UserError, match="label_delimiter"):
        load_multilabel_data(DataConfig(train=tmp_path / "t.csv", label_column="tags"), 0)
    data = load_multilabel_data(DataConfig(train=tmp_path / "t.csv", validation=tmp_path / "t.csv",
                                           label_column="tags", label_delimiter="|"), 0)
    assert data.label_names == ["x", "y"] and data.train.labels == [[1, 1], [0, 1], [1, 1], [1, 0]]
    write_jsonl(tmp_path / "train.jsonl", [{"text": "a", "labels": ["x"]}, {"text": "b", "labels": ["y", "x"]}])
    write_jsonl(tmp_path / "val.jsonl", [{"text": "c", "labels": ["x"]}, {"text": "d", "labels": ["zz"]}])
    with pytest.raises(UserError, match=r"'zz'.*rows 2"):
        load_multilabel_data(DataConfig(train=tmp_path / "train.jsonl", validation=tmp_path / "val.jsonl",
                                        label_column="labels"), 0)


def test_multilabel_run_learns_tunes_thresholds_predicts_and_evaluates(tmp_path, tiny_model):
    write_jsonl(tmp_path / "train.jsonl", multilabel_rows(300, seed=1))
    write_jsonl(tmp_path / "test.jsonl", multilabel_rows(80, seed=2))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text(tiny_model, "multilabel:\n  pos_weight: balanced\n  thresholds: per_label\n"))
    run = tmp_path / "run"
    code, out, err = run_cli("train", str(recipe), "--output", str(run))
    assert code == 0, err
    metrics = json.loads((run / "eval/test/metrics.json").read_text())
    for key in ("f1_micro", "f1_macro", "f1_weighted", "subset_accuracy", "hamming_loss", "roc_auc", "per_class",
                "at_threshold_0.5", "thresholds"):
        assert key in metrics
    assert metrics["f1_micro"] > 0.8 and metrics["f1_macro"] > 0.8, metrics  # chance F1 is ~0.45
    assert set(metrics["per_class"]) == {"card", "negative", "positive"}
    stored = json.loads((run / "thresholds.json").read_text())
    assert stored["mode"] == "per_label" and set(stored["thresholds"]) == {"card", "negative", "positive"}
    model_config = json.loads((run / "model/config.json").read_text())
    assert model_config["problem_type"] == "multi_label_classification"

    rows = multilabel_rows(30, seed=9)
    write_jsonl(tmp_path / "new.jsonl", [{"text": r["text"]} for r in rows])
    code, _, err = run_cli("predict", str(run), "--input", str(tmp_path / "new.jsonl"), "--output",
                           str(tmp_path / "out.jsonl"))
    assert code == 0, err
    predicted = pd.read_json(tmp_path / "out.jsonl", lines=True)
    assert set(predicted.columns) == {"text", "predicted_labels", "probabilities"}
    names = ["card", "negative", "positive"]
    decisions = [(name in p) == (name in r["labels"]) for p, r in zip(predicted["predicted_labels"], rows)
                 for name in names]
    assert np.mean(decisions) > 0.7  # per (row, label) decision; always "no label" scores about 0.5
    assert set(predicted["probabilities"][0]) == {"card", "negative", "positive"}

    code, out, err = run_cli("predict", str(run), "--text", "the film was great card")
    assert code == 0, err
    first, *scores = out.splitlines()
    assert set(first.split(",")) <= set(names) and len(scores) == 3 and "threshold" in scores[0]

    write_jsonl(tmp_path / "extra.jsonl", rows)
    code, out, err = run_cli("eval", str(run), "--data", str(tmp_path / "extra.jsonl"))
    assert code == 0, err
    assert json.loads((run / "eval/extra/metrics.json").read_text())["n_examples"] == 30

    from transformers import pipeline

    classifier = pipeline("text-classification", model=str(run / "model"), device="cpu", top_k=None)
    scores = {s["label"]: s["score"] for s in classifier([rows[0]["text"]])[0]}
    assert scores == pytest.approx(predicted["probabilities"][0], abs=1e-4)  # sigmoid, not softmax
