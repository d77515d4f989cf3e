"""`tuneforge data noise`: out-of-fold probabilities + confident learning find flipped labels."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd

from conftest import run_cli, synthetic_rows, write_jsonl
from tuneforge.core.recipe import load_recipe
from tuneforge.apps.datatools.noise import find_noise


def noisy_job(tmp_path, tiny_model, rows: int = 300, noise: float = 0.05, seed: int = 0):
    """A recipe on synthetic data with ``noise`` of the labels flipped; returns (recipe path, flipped lines)."""
    data = synthetic_rows(rows, seed=1)
    rng = random.Random(seed)
    flipped = sorted(rng.sample(range(rows), round(noise * rows)))
    for i in flipped:
        data[i]["label"] = "negative" if data[i]["label"] == "positive" else "positive"
    write_jsonl(tmp_path / "train.jsonl", data)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"name: noisy\nmodel: {tiny_model}\ndata: {{train: train.jsonl, max_length: 32}}\n"
                      "method: freeze\n", encoding="utf-8")
    return recipe, {i + 1 for i in flipped}  # .jsonl rows are line numbers


def test_finder_recovers_injected_noise_from_informative_features(tmp_path, tiny_model):
    """With features that separate the classes (here: the sentiment word, one-hot), confident learning on
    out-of-fold probabilities must find nearly all flipped rows and little else."""
    from conftest import NEGATIVE, POSITIVE

    recipe_path, flipped = noisy_job(tmp_path, tiny_model, rows=400, noise=0.05)
    recipe = load_recipe(recipe_path)
    texts = [line for line in pd.read_json(tmp_path / "train.jsonl", lines=True)["text"]]
    vocabulary = POSITIVE + NEGATIVE
    features = np.array([[float(w in t.split()) for w in vocabulary] for t in texts])
    features += np.random.default_rng(0).normal(0, 0.05, features.shape)
    result = find_noise(recipe, folds=5, features=features)
    found = set(result.issues["row"])
    precision = len(found & flipped) / len(found)
    recall = len(found & flipped) / len(flipped)
    assert recall >= 0.75 and precision >= 0.8, (precision, recall, len(found))
    assert list(result.issues["rank"]) == list(range(1, len(found) + 1))
    assert list(result.issues["label_probability"]) == sorted(result.issues["label_probability"])
    assert (result.issues["suggested_label"] != result.issues["label"]).all()


def test_noise_command_writes_ranked_csv(tmp_path, tiny_model, monkeypatch):
    recipe, flipped = noisy_job(tmp_path, tiny_model, rows=120, noise=0.1)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("data", "noise", str(recipe), "--folds", "3")
    assert code == 0, err
    table = pd.read_csv(tmp_path / "noisy.label_issues.csv")
    assert list(table.columns) == ["rank", "row", "text", "label", "suggested_label", "label_probability",
                                   "suggested_probability"]
    assert table["row"].between(1, 120).all() and table["row"].is_unique
    assert "look mislabelled" in out and "3 folds" in out
    # never overwrites; bad folds are one clear line
    code, _, err = run_cli("data", "noise", str(recipe), "--folds", "3")
    assert code == 1 and "never overwrites" in err
    code, _, err = run_cli("data", "noise", str(recipe), "--folds", "500", "--output", "other.csv")
    assert code == 1 and "fewer rows than --folds 500" in err
    code, _, err = run_cli("data", "noise", str(recipe), "--set", "data.label_column=stars", "--output", "o.csv")
    assert code == 1 and "no column 'stars'" in err
