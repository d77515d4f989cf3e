"""The learning guard (a run no better than one that learned nothing says so), degenerate multi-label thresholds
and the multi-label output bias at the labels' prior log odds — on the tiny BERT."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import run_cli, synthetic_rows, tiny_recipe_text, write_jsonl
from test_multilabel import multilabel_rows, recipe_text as multilabel_recipe_text
from tuneforge.core.evaluate.learning_guard import LearningSignal, judge_learning, margin_for
from tuneforge.core.evaluate.multilabel import choose_thresholds
from tuneforge.core.tasks.multilabel import MultiLabelLoss, MultiLabelTask, prior_log_odds

FAST = "  epochs: 3\n"


def shuffled(rows: list[dict], key: str, seed: int) -> list[dict]:
    """The same texts with the label column permuted: no signal left to learn."""
    labels = [row[key] for row in rows]
    random.Random(seed).shuffle(labels)
    return [{**row, key: label} for row, label in zip(rows, labels)]


def test_judge_learning_against_the_baseline():
    signals = (LearningSignal("roc_auc"), LearningSignal("accuracy"))
    baseline = {"roc_auc": 0.5, "accuracy": 0.6}
    # the collapsed multi-label run of issue 24: AUC 0.52 is chance, accuracy no better than the majority
    verdict = judge_learning({"roc_auc": 0.52, "accuracy": 0.6, "n_examples": 5000}, baseline, signals)
    assert verdict.checked and not verdict.learned and verdict.line().startswith("did not learn")
    assert judge_learning({"roc_auc": 0.8, "accuracy": 0.6, "n_examples": 5000}, baseline, signals).learned
    # a small validation split needs a larger step above the baseline to count
    assert margin_for("accuracy", 25) == pytest.approx(0.2) and margin_for("accuracy", 10**6) == 0.01
    assert not judge_learning({"accuracy": 0.75, "n_examples": 25}, baseline, signals).learned
    loss = (LearningSignal("loss", higher_is_better=False),)
    assert not judge_learning({"loss": 2.5}, {"loss": 2.4}, loss).learned
    assert judge_learning({"loss": 2.3}, {"loss": 2.4}, loss).learned
    unchecked = judge_learning({"loss": 2.3}, {}, loss)
    assert unchecked.learned and not unchecked.checked
    facts = verdict.as_facts(("fix it",))
    assert facts["likely_fixes"] == ["fix it"] and facts["learned"] is False


def test_shuffled_labels_did_not_learn_and_fail_with_the_key(tmp_path, tiny_model):
    write_jsonl(tmp_path / "train.jsonl", shuffled(synthetic_rows(240, seed=1), "label", seed=3))
    write_jsonl(tmp_path / "test.jsonl", synthetic_rows(40, seed=2))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, extra="").replace("  epochs: 6\n", FAST)
                      + "  fail_if_not_learning: true\n", encoding="utf-8")
    run = tmp_path / "runs" / "shuffled"
    code, out, err = run_cli("train", str(recipe), "--output", str(run))
    assert code == 3, (out, err)
    assert "did not learn" in out and "likely fixes" in out
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "completed: did not learn"
    assert status["learning"]["learned"] is False and status["learning"]["likely_fixes"]
    assert (run / "model").is_dir()  # the run is complete all the same: saved and evaluated
    code, out, _ = run_cli("runs", str(tmp_path / "runs"))
    assert code == 0 and "did not learn" in out
    code, out, _ = run_cli("doctor", str(run))
    assert code == 1 and "did not learn" in out
    assert "did not learn" in (run / "report.html").read_text(encoding="utf-8")


def test_learnable_rows_complete(tmp_path, tiny_model):
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(240, seed=1))
    write_jsonl(tmp_path / "test.jsonl", synthetic_rows(40, seed=2))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model) + "  fail_if_not_learning: true\n", encoding="utf-8")
    code, out, err = run_cli("train", str(recipe), "--output", str(tmp_path / "run"))
    assert code == 0, (out, err)
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "completed" and status["learning"]["learned"] is True


def test_multilabel_shuffled_labels_did_not_learn(tmp_path, tiny_model):
    write_jsonl(tmp_path / "train.jsonl", shuffled(multilabel_rows(240, seed=1), "labels", seed=4))
    write_jsonl(tmp_path / "test.jsonl", multilabel_rows(40, seed=2))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(multilabel_recipe_text(tiny_model).replace("  epochs: 6\n", FAST)
                      + "  fail_if_not_learning: true\n", encoding="utf-8")
    run = tmp_path / "run"
    code, out, err = run_cli("train", str(recipe), "--output", str(run))
    assert code == 3, (out, err)
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "completed: did not learn"
    assert any("init_bias" in fix or "head learning rate" in fix for fix in status["learning"]["likely_fixes"])


def test_degenerate_thresholds_are_never_chosen():
    rng = np.random.default_rng(0)
    rows = 400
    gold = np.zeros((rows, 3), dtype=np.int64)
    gold[:, 0] = rng.random(rows) < 0.3   # informative scores
    gold[:, 1] = rng.random(rows) < 0.05  # positives scored below the negatives: "always" is its best F1
    probabilities = np.column_stack([np.clip(gold[:, 0] * 0.5 + rng.random(rows) * 0.5, 0, 1),
                                     0.2 - 0.1 * gold[:, 1] + rng.random(rows) * 0.05,
                                     np.full(rows, 0.3)])  # label 2: no positive row
    choice = choose_thresholds(gold, probabilities, "per_label", ["good", "noise", "absent"])
    flagged = {f["label"]: f for f in choice.flagged}
    assert set(flagged) == {"noise", "absent"}
    assert flagged["noise"]["support"] == int(gold[:, 1].sum()) and flagged["absent"]["support"] == 0
    assert choice.thresholds[1] == 0.5 and choice.thresholds[2] == 0.5
    assert 0.02 <= choice.thresholds[0] < 0.95  # tuned (it happens to be 0.5: positives score 0.5 and up)
    decided = probabilities >= choice.thresholds
    assert 0 < decided[:, 0].sum() < rows and not decided[:, 1].all()
    # a constant model (every label's probability the same for every row): nothing tuned, everything flagged
    constant = choose_thresholds(gold, np.full((rows, 3), 0.04), "per_label", ["a", "b", "c"])
    assert constant.thresholds.tolist() == [0.5, 0.5, 0.5] and len(constant.flagged) == 3
    assert choose_thresholds(gold, np.full((rows, 3), 0.04), "global", ["a", "b", "c"]).flagged


def test_output_bias_starts_at_the_label_priors(tiny_model):
    from transformers import AutoModelForSequenceClassification

    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [1, 0, 0]] * 5)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3)
    recipe = SimpleNamespace(multilabel=SimpleNamespace(init_bias="prior"))
    data = SimpleNamespace(train=SimpleNamespace(labels=labels.tolist()), label_names=["a", "b", "c"])
    MultiLabelTask().before_training(recipe, data, model, None, torch.device("cpu"), None, None, lambda m: None)
    prior = (labels.sum(axis=0) + 0.5) / (len(labels) + 1)
    expected = np.log(prior / (1 - prior))
    assert np.allclose(model.classifier.bias.detach().numpy(), expected, atol=1e-6)
    assert np.allclose(prior_log_odds(labels), expected)
    # the untrained model's mean sigmoid is close to each label's base rate (its weights are small)
    probabilities = torch.sigmoid(model.classifier.bias).detach().numpy()
    assert np.allclose(probabilities, prior, atol=1e-6)


@pytest.mark.parametrize("kind", ["focal", "asymmetric"])
def test_sparse_positive_losses(kind):
    logits = torch.tensor([[2.0, -3.0], [-1.0, 0.5]], requires_grad=True)
    labels = torch.tensor([[1, 0], [0, 1]])
    loss = MultiLabelLoss(kind=kind)(logits, labels)
    bce = MultiLabelLoss()(logits, labels)
    assert 0 < loss.item() < bce.item()  # both down-weight the easy terms
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # an easy negative far below the clip costs the asymmetric loss nothing
    if kind == "asymmetric":
        assert MultiLabelLoss(kind=kind)(torch.tensor([[-8.0]]), torch.tensor([[0]])).item() == 0.0
