"""Write an evaluation folder: metrics.json, predictions.csv, errors.csv, confusion_matrix.png."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneforge.core.evaluate.calibration import expected_calibration_error
from tuneforge.core.evaluate.metrics import classification_metrics
from tuneforge.core.evaluate.plots import plot_confusion_matrix


def write_evaluation(folder: Path, label_names: list[str], gold: np.ndarray, probabilities: np.ndarray,
                     texts: list[str], text_pairs: list[str] | None = None,
                     source_rows: list[int] | None = None,
                     extra_metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute metrics (with ``ece``: the expected calibration error of ``probabilities``, the confidences this
    folder reports) and write the eval folder; ``extra_metrics`` (e.g. the ECE before calibration) are added to
    metrics.json. Returns the metrics."""
    folder.mkdir(parents=True, exist_ok=True)
    gold = np.asarray(gold)
    metrics = classification_metrics(gold, probabilities, label_names)
    metrics["ece"] = expected_calibration_error(probabilities, gold)
    metrics.update(extra_metrics or {})
    (folder / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")

    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    table = pd.DataFrame({"row": source_rows if source_rows is not None else range(1, len(gold) + 1), "text": texts})
    if text_pairs is not None:
        table["text_pair"] = text_pairs
    table["gold"] = [label_names[i] for i in gold]
    table["predicted"] = [label_names[i] for i in predicted]
    table["confidence"] = np.round(confidence, 6)
    table["correct"] = gold == predicted
    table.to_csv(folder / "predictions.csv", index=False)
    errors = table.loc[~table["correct"]].sort_values("confidence", ascending=False).drop(columns="correct")
    errors.to_csv(folder / "errors.csv", index=False)
    plot_confusion_matrix(gold, predicted, label_names, folder / "confusion_matrix.png")
    return metrics
