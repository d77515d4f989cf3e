"""Multi-label metrics, decision thresholds and the eval folder.

Takes label names, gold multi-hot rows and per-label probabilities (sigmoids); knows nothing of models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score, hamming_loss, precision_recall_fscore_support, roc_auc_score

# Candidate thresholds searched on the validation set.
THRESHOLD_GRID = np.round(np.arange(0.02, 0.951, 0.01), 2)


def decide(probabilities: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Multi-hot predictions: a label is on when its probability reaches its threshold."""
    return (probabilities >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)


def multilabel_metrics(gold: np.ndarray, probabilities: np.ndarray, label_names: list[str],
                       thresholds: np.ndarray | float = 0.5, per_label: bool = True) -> dict[str, Any]:
    """Micro/macro/weighted F1, macro P/R, subset accuracy (as ``accuracy`` too), hamming loss, macro ROC-AUC
    (over labels with positives and negatives) and, optionally, per-label P/R/F1/support."""
    gold = np.asarray(gold, dtype=np.int64)
    predicted = decide(probabilities, thresholds)
    subset = float((predicted == gold).all(axis=1).mean()) if len(gold) else 0.0
    metrics: dict[str, Any] = {"n_examples": int(len(gold)), "accuracy": subset, "subset_accuracy": subset,
                               "hamming_loss": float(hamming_loss(gold, predicted))}
    for average in ("micro", "macro", "weighted"):
        metrics[f"f1_{average}"] = float(f1_score(gold, predicted, average=average, zero_division=0))
    precision, recall, _, _ = precision_recall_fscore_support(gold, predicted, average="macro", zero_division=0)
    metrics["precision_macro"], metrics["recall_macro"] = float(precision), float(recall)
    scored = [k for k in range(gold.shape[1]) if 0 < gold[:, k].sum() < len(gold)]
    metrics["roc_auc"] = (float(np.mean([roc_auc_score(gold[:, k], probabilities[:, k]) for k in scored]))
                          if scored else None)
    if per_label:
        precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, average=None,
                                                                         zero_division=0)
        metrics["per_class"] = {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                                       "f1": float(f1[i]), "support": int(support[i])}
                                for i, name in enumerate(label_names)}
    return metrics


def tune_thresholds(gold: np.ndarray, probabilities: np.ndarray, mode: str | float) -> np.ndarray:
    """One threshold per label. ``per_label``: each label's own F1-best threshold on these rows (0.5 for a label
    without positives here); ``global``: the one threshold with the best micro F1; a number: that number."""
    gold = np.asarray(gold, dtype=np.int64)
    labels = gold.shape[1]
    if not isinstance(mode, str):
        return np.full(labels, float(mode))
    if mode == "global":
        scores = [f1_score(gold, decide(probabilities, t), average="micro", zero_division=0) for t in THRESHOLD_GRID]
        return np.full(labels, float(THRESHOLD_GRID[int(np.argmax(scores))]))
    thresholds = np.full(labels, 0.5)
    for k in range(labels):
        if gold[:, k].sum() == 0:
            continue
        predicted = probabilities[:, k][None, :] >= THRESHOLD_GRID[:, None]       # grid x rows
        true_positive = (predicted & (gold[:, k] == 1)[None, :]).sum(axis=1)
        f1 = 2 * true_positive / np.maximum(predicted.sum(axis=1) + gold[:, k].sum(), 1)
        thresholds[k] = float(THRESHOLD_GRID[int(np.argmax(f1))])  # first best = lowest threshold on ties
    return thresholds


def save_thresholds(path: Path, label_names: list[str], thresholds: np.ndarray, mode: str | float,
                    tuned_on: str) -> None:
    """``thresholds.json`` of a run: what predict, eval and serve decide with."""
    path.write_text(json.dumps({"mode": mode, "tuned_on": tuned_on,
                                "thresholds": {name: float(t) for name, t in zip(label_names, thresholds)}},
                               indent=1, ensure_ascii=False), encoding="utf-8")


def load_thresholds(run_dir: Path, label_names: list[str]) -> np.ndarray:
    """The thresholds a run stored (0.5 for a run without ``thresholds.json``)."""
    path = Path(run_dir) / "thresholds.json"
    if not path.is_file():
        return np.full(len(label_names), 0.5)
    stored = json.loads(path.read_text(encoding="utf-8"))["thresholds"]
    return np.array([float(stored.get(name, 0.5)) for name in label_names])


def write_multilabel_evaluation(folder: Path, label_names: list[str], gold: np.ndarray, probabilities: np.ndarray,
                                thresholds: np.ndarray, texts: list[str], source_rows: list[int] | None = None
                                ) -> dict[str, Any]:
    """metrics.json (at the run's thresholds, plus micro/macro F1 at 0.5 for comparison), predictions.csv and
    errors.csv (rows whose label set is wrong, most confident mistake first); returns the metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    gold = np.asarray(gold, dtype=np.int64)
    metrics = multilabel_metrics(gold, probabilities, label_names, thresholds)
    at_half = multilabel_metrics(gold, probabilities, label_names, 0.5, per_label=False)
    metrics["at_threshold_0.5"] = {k: at_half[k] for k in ("f1_micro", "f1_macro", "f1_weighted", "subset_accuracy",
                                                           "hamming_loss")}
    metrics["thresholds"] = {name: float(t) for name, t in zip(label_names, thresholds)}
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    predicted = decide(probabilities, thresholds)
    wrongness = np.abs(probabilities - thresholds) * (predicted != gold)
    table = pd.DataFrame({"row": source_rows if source_rows is not None else range(1, len(gold) + 1), "text": texts,
                          "gold": [join_labels(label_names, row) for row in gold],
                          "predicted": [join_labels(label_names, row) for row in predicted],
                          "correct": (predicted == gold).all(axis=1),
                          "worst_margin": np.round(wrongness.max(axis=1), 6)})
    table.to_csv(folder / "predictions.csv", index=False)
    table.loc[~table["correct"]].sort_values("worst_margin", ascending=False).drop(columns="correct").to_csv(
        folder / "errors.csv", index=False)
    return metrics


def join_labels(label_names: list[str], multi_hot: np.ndarray) -> str:
    return ",".join(name for name, on in zip(label_names, multi_hot) if on)
