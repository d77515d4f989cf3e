"""Calibrated confidences for single-label classifiers: temperature scaling, expected calibration error (ECE) and
the table behind a reliability diagram.

Temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks") divides every logit by one
scalar ``T > 0`` fitted on the validation split to minimise the negative log-likelihood (NLL). Dividing all of a
row's logits by the same positive number keeps their order, so the predicted label (the argmax), accuracy and F1
never change; only the confidences do (``T > 1`` softens an over-confident model, ``T < 1`` sharpens).

ECE: the confidences (each row's highest probability) are put into :data:`ECE_BINS` equal-width bins over [0, 1]
(bin ``b`` holds ``(b/15, (b+1)/15]``); ECE = sum over bins of (rows in bin / all rows) * |accuracy - mean
confidence| of the bin. The same bins, with their counts, are the reliability diagram.

This module takes logits, probabilities and gold label ids; it knows no model, task or loop. What a run stores
(``calibration.json``) is built by :func:`calibration_record` and read back by :func:`read_temperature`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tuneforge.base.errors import UserError

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15
# Temperatures outside this range mean the validation split cannot say how confident the model should be (a
# handful of rows, or no errors at all); the fit is bounded to it and says when it stopped at a bound.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
# Fewer validation rows than this: no fit (one number from a few rows would be noise).
MIN_VALIDATION_ROWS = 20


def softmax_with_temperature(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float32, numerically stable)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


def negative_log_likelihood(logits: np.ndarray, gold: np.ndarray, temperature: float = 1.0) -> float:
    """Mean cross-entropy of ``softmax(logits / temperature)`` against gold label ids."""
    scaled = torch.as_tensor(np.asarray(logits, dtype=np.float64)) / temperature
    return float(torch.nn.functional.cross_entropy(scaled, torch.as_tensor(np.asarray(gold, dtype=np.int64))))


def fit_temperature(logits: np.ndarray, gold: np.ndarray) -> float:
    """The temperature that minimises the validation NLL: L-BFGS (strong Wolfe line search) on log T, starting
    at T = 1, in float64; bounded to [:data:`MIN_TEMPERATURE`, :data:`MAX_TEMPERATURE`]. Returns 1.0 when no
    temperature lowers the NLL."""
    values = torch.as_tensor(np.asarray(logits, dtype=np.float64))
    labels = torch.as_tensor(np.asarray(gold, dtype=np.int64))
    log_temperature = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_temperature], lr=1.0, max_iter=200, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(values / log_temperature.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    fitted = float(log_temperature.detach().exp())
    if not math.isfinite(fitted):
        return 1.0
    fitted = min(max(fitted, MIN_TEMPERATURE), MAX_TEMPERATURE)
    # L-BFGS on this one-dimensional convex problem does not go uphill, but keep T = 1 if it somehow did.
    return fitted if negative_log_likelihood(logits, gold, fitted) <= negative_log_likelihood(logits, gold) else 1.0


def reliability_bins(probabilities: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """The reliability diagram's data: per equal-width confidence bin its bounds, row count, mean confidence
    and accuracy (None for an empty bin)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(gold)
    # bin b holds (b/bins, (b+1)/bins]; a confidence of exactly 0 (impossible for a softmax maximum) goes to bin 0
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        table.append({"lower": b / bins, "upper": (b + 1) / bins, "count": count,
                      "mean_confidence": float(confidence[members].mean()) if count else None,
                      "accuracy": float(correct[members].mean()) if count else None})
    return table


def expected_calibration_error(probabilities: np.ndarray, gold: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over ``bins`` equal-width confidence bins: sum of (bin share of rows) * |accuracy - mean confidence|.
    NaN when there are no rows."""
    table = reliability_bins(probabilities, gold, bins)
    total = sum(row["count"] for row in table)
    if total == 0:
        return float("nan")
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["mean_confidence"])
                     for row in table if row["count"]))


def split_record(logits: np.ndarray, gold: np.ndarray, temperature: float) -> dict[str, Any]:
    """One split's NLL, ECE and reliability bins before (T = 1) and after scaling by ``temperature``."""
    before = softmax_with_temperature(logits)
    after = softmax_with_temperature(logits, temperature)
    return {"n_examples": int(len(gold)),
            "nll_before": negative_log_likelihood(logits, gold), "nll_after": negative_log_likelihood(logits, gold,
                                                                                                    temperature),
            "ece_before": expected_calibration_error(before, gold), "ece_after": expected_calibration_error(after, gold),
            "bins_before": reliability_bins(before, gold), "bins_after": reliability_bins(after, gold)}


def why_not_fitted(logits: np.ndarray, gold: np.ndarray) -> str | None:
    """The reason the validation split cannot fit a temperature, or None when it can."""
    if len(gold) < MIN_VALIDATION_ROWS:
        return f"the validation split has {len(gold)} row(s), fewer than {MIN_VALIDATION_ROWS}"
    if not np.isfinite(logits).all():
        return "the validation logits are not all finite"
    if (np.asarray(logits).argmax(axis=1) == np.asarray(gold)).all():
        return ("the model makes no error on the validation split, so its NLL keeps falling as T goes to 0: "
                "the split cannot say how confident the model should be")
    return None


def calibration_record(validation_logits: np.ndarray, validation_gold: np.ndarray,
                       test_logits: np.ndarray | None = None, test_gold: np.ndarray | None = None) -> dict[str, Any]:
    """Fit the temperature on validation and measure validation (and test, when given) before and after: what
    ``calibration.json`` holds. Unfitted (``fitted`` False, T = 1, ``reason``) when the split cannot tell."""
    validation_logits = np.asarray(validation_logits, dtype=np.float64)
    validation_gold = np.asarray(validation_gold, dtype=np.int64)
    reason = why_not_fitted(validation_logits, validation_gold)
    temperature = 1.0 if reason is not None else fit_temperature(validation_logits, validation_gold)
    record: dict[str, Any] = {"method": "temperature scaling (one T > 0, validation NLL minimised by L-BFGS on log T)",
                              "temperature": temperature, "fitted": reason is None, "fitted_on": "validation",
                              "ece_bins": ECE_BINS, "bounds": [MIN_TEMPERATURE, MAX_TEMPERATURE]}
    if reason is not None:
        record["reason"] = reason
    elif temperature in (MIN_TEMPERATURE, MAX_TEMPERATURE):
        record["reason"] = f"the fit stopped at the bound T = {temperature:g}"
    if len(validation_gold):
        record["validation"] = split_record(validation_logits, validation_gold, temperature)
    if test_logits is not None and test_gold is not None and len(test_gold):
        record["test"] = split_record(np.asarray(test_logits, dtype=np.float64), np.asarray(test_gold), temperature)
    return record


def calibration_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The record without its bin tables: what ``run.json`` keeps under ``calibration``."""
    summary = {key: record[key] for key in ("temperature", "fitted", "reason", "ece_bins") if key in record}
    for split in ("validation", "test"):
        if split in record:
            summary[split] = {key: value for key, value in record[split].items() if not key.startswith("bins_")}
    return summary


def calibration_line(record: dict[str, Any]) -> str:
    """The record in one sentence for the log."""
    if not record["fitted"]:
        return f"calibration: not fitted ({record['reason']}); confidences are the plain softmax"
    parts = [f"calibration: temperature {record['temperature']:.3f}"]
    for split in ("validation", "test"):
        if split in record:
            parts.append(f"{split} ECE {record[split]['ece_before']:.4f} -> {record[split]['ece_after']:.4f}")
    return ", ".join(parts)


def read_temperature(run_dir: str | Path) -> float | None:
    """The temperature a run stored in ``calibration.json``; None for a run without one (trained before
    calibration existed, or with ``train.calibrate: false``) or with an unfitted record."""
    path = Path(run_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        temperature = float(record["temperature"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"{path}: cannot be read ({type(error).__name__}: {error}); remove it to use the plain "
                         "softmax, or train again") from None
    if not record.get("fitted", True):
        return None
    if not (math.isfinite(temperature) and temperature > 0):
        raise UserError(f"{path}: temperature {temperature} is not a positive number; remove the file to use the "
                         "plain softmax, or train again")
    return temperature
