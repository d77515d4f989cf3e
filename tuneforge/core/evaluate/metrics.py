"""Classification metrics from gold label ids and predicted probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support, roc_auc_score


def roc_auc(gold: np.ndarray, probabilities: np.ndarray) -> float | None:
    """Binary AUC, or one-vs-rest macro AUC over the classes that have positives and negatives."""
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(gold, probabilities[:, 1])) if len(set(gold.tolist())) == 2 else None
    scores = [roc_auc_score(gold == k, probabilities[:, k]) for k in range(probabilities.shape[1])
              if 0 < (gold == k).sum() < len(gold)]
    return float(np.mean(scores)) if scores else None


def classification_metrics(gold: np.ndarray, probabilities: np.ndarray, label_names: list[str],
                           per_class: bool = True) -> dict[str, Any]:
    """accuracy, macro/weighted F1, macro P/R, ROC-AUC, and (optionally) per-class P/R/F1/support."""
    gold = np.asarray(gold)
    predicted = probabilities.argmax(axis=1)
    labels = list(range(len(label_names)))
    metrics: dict[str, Any] = {"n_examples": int(len(gold)), "accuracy": float(accuracy_score(gold, predicted))}
    for average in ("macro", "weighted"):
        precision, recall, f1, _ = precision_recall_fscore_support(gold, predicted, labels=labels,
                                                                   average=average, zero_division=0)
        metrics[f"f1_{average}"] = float(f1)
        if average == "macro":
            metrics["precision_macro"] = float(precision)
            metrics["recall_macro"] = float(recall)
    metrics["roc_auc"] = roc_auc(gold, probabilities)
    if per_class:
        precision, recall, f1, support = precision_recall_fscore_support(gold, predicted, labels=labels,
                                                                         average=None, zero_division=0)
        metrics["per_class"] = {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(label_names)
        }
    return metrics
