"""Multi-label metrics, decision thresholds and the eval folder.

Takes label names, gold multi-hot rows and per-label probabilities (sigmoids); knows nothing of models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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


# A tuned threshold must beat predicting the label always (or never) by this much F1, else the label keeps 0.5.
DEGENERATE_MARGIN = 0.01
FALLBACK_THRESHOLD = 0.5


@dataclass
class ThresholdChoice:
    """Tuned thresholds, and the labels whose best threshold was no better than deciding "always" or "never"
    (they keep :data:`FALLBACK_THRESHOLD`): ``{"label", "support", "rows", "best_f1", "always_f1", "reason"}``."""

    thresholds: np.ndarray
    flagged: list[dict[str, Any]] = field(default_factory=list)


def always_f1(positives: int, rows: int) -> float:
    """F1 of predicting a label for every row (precision = its share, recall 1); "never" scores 0."""
    return 2 * positives / (rows + positives) if rows else 0.0


def choose_thresholds(gold: np.ndarray, probabilities: np.ndarray, mode: str | float,
                      label_names: list[str]) -> ThresholdChoice:
    """One threshold per label. ``per_label``: each label's own F1-best threshold on these rows; ``global``: the one
    threshold with the best micro F1; a number: that number.

    A tuned threshold that is no better (within :data:`DEGENERATE_MARGIN` F1) than "always" or "never" — or that
    decides every row the same way — is degenerate: that label keeps 0.5 and is flagged with its support (a model
    that learned nothing otherwise gets thresholds that predict every label for every row)."""
    gold = np.asarray(gold, dtype=np.int64)
    rows, labels = gold.shape
    if not isinstance(mode, str):
        return ThresholdChoice(np.full(labels, float(mode)))
    if mode == "global":
        scores = [f1_score(gold, decide(probabilities, t), average="micro", zero_division=0) for t in THRESHOLD_GRID]
        best = int(np.argmax(scores))
        baseline = always_f1(int(gold.sum()), gold.size)
        predicted = int(decide(probabilities, THRESHOLD_GRID[best]).sum())
        if scores[best] <= baseline + DEGENERATE_MARGIN or predicted in (0, gold.size):
            return ThresholdChoice(np.full(labels, FALLBACK_THRESHOLD), [
                {"label": "(all labels)", "support": int(gold.sum()), "rows": rows, "best_f1": float(scores[best]),
                 "always_f1": baseline, "reason": "the best global threshold is no better than always or never"}])
        return ThresholdChoice(np.full(labels, float(THRESHOLD_GRID[best])))
    choice = ThresholdChoice(np.full(labels, FALLBACK_THRESHOLD))
    for k in range(labels):
        support = int(gold[:, k].sum())
        if support == 0:
            choice.flagged.append({"label": label_names[k], "support": 0, "rows": rows, "best_f1": None,
                                   "always_f1": 0.0, "reason": "no positive validation row"})
            continue
        predicted = probabilities[:, k][None, :] >= THRESHOLD_GRID[:, None]       # grid x rows
        true_positive = (predicted & (gold[:, k] == 1)[None, :]).sum(axis=1)
        f1 = 2 * true_positive / np.maximum(predicted.sum(axis=1) + support, 1)
        best = int(np.argmax(f1))  # first best = lowest threshold on ties
        baseline = always_f1(support, rows)
        if f1[best] <= baseline + DEGENERATE_MARGIN or predicted[best].sum() in (0, rows):
            choice.flagged.append({"label": label_names[k], "support": support, "rows": rows,
                                   "best_f1": float(f1[best]), "always_f1": baseline,
                                   "reason": "the best threshold is no better than always or never"})
            continue
        choice.thresholds[k] = float(THRESHOLD_GRID[best])
    return choice


def tune_thresholds(gold: np.ndarray, probabilities: np.ndarray, mode: str | float) -> np.ndarray:
    """The thresholds of :func:`choose_thresholds` (degenerate labels at 0.5), without the flags."""
    names = [str(k) for k in range(np.asarray(gold).shape[1])]
    return choose_thresholds(gold, probabilities, mode, names).thresholds


def save_thresholds(path: Path, label_names: list[str], thresholds: np.ndarray, mode: str | float,
                    tuned_on: str, flagged: list[dict[str, Any]] | None = None) -> None:
    """``thresholds.json`` of a run: what predict, eval and serve decide with; ``flagged``: the labels whose tuned
    threshold was degenerate (they keep 0.5), each with its validation support."""
    path.write_text(json.dumps({"mode": mode, "tuned_on": tuned_on,
                                "thresholds": {name: float(t) for name, t in zip(label_names, thresholds)},
                                "flagged": list(flagged or [])},
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
