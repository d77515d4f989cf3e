"""Parity: does the exported model give the same answers as the run's PyTorch model?

Both classify the same rows (a sample of the run's validation split); we report the largest absolute
logit difference and the share of rows where the predicted labels agree.

What fails the export:

- an fp32 export (and any export with ``--min-agreement``, the strict gate): agreement on all rows below the
  threshold (default 99%);
- an INT8 export without ``--min-agreement``: agreement below 99% on the rows where the fp32 model is
  confident (top-class probability >= 90%). A row the fp32 model itself hesitates on may flip under
  quantization without the model getting worse; whether it got worse is the integrity gate's accuracy check
  (validation accuracy may drop by at most ``export.max_metric_drop``, 1 point by default). The raw
  agreement is still measured and reported. With no confident row (a model unsure of every row) the accuracy
  check alone judges, when the rows are labelled; without labels (``--data``) the strict rule applies.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tuneforge.base.errors import UserError
from tuneforge.base.integrity import IntegrityError, export_failure_message
from tuneforge.apps.export.runtime import REPORT_NAME, write_report

MIN_AGREEMENT = 0.99
# An INT8 export is judged on the rows where the fp32 model is this sure of its answer...
CONFIDENT_PROBABILITY = 0.9
# ... and must agree with it on at least this share of them.
CONFIDENT_AGREEMENT = 0.99


class ParityError(UserError):
    """The exported model disagrees with the run's model on too many rows."""


def compare_logits(reference: np.ndarray, candidate: np.ndarray, min_agreement: float | None = MIN_AGREEMENT,
                   quantized: bool = False, labelled: bool = False) -> dict:
    """max/mean |Δlogit| and prediction agreement between two ``[rows, labels]`` logit arrays, overall and on
    the rows where ``reference`` is confident; ``passed`` by the rule in the module docstring (``min_agreement``
    None: the default rule of the export's kind; ``labelled``: the integrity gate also checks the accuracy of
    these rows)."""
    if reference.shape != candidate.shape:
        raise ParityError(f"parity: the exported model returns logits of shape {candidate.shape}, the run's model "
                          f"{reference.shape}")
    difference = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    finite = bool(np.isfinite(candidate).all())
    agree = reference.argmax(axis=1) == candidate.argmax(axis=1)
    agreement = float(agree.mean()) if len(agree) else 0.0
    shifted = reference.astype(np.float64) - reference.max(axis=1, keepdims=True)
    confidence = (np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)).max(axis=1)
    confident = confidence >= CONFIDENT_PROBABILITY
    confident_agreement = float(agree[confident].mean()) if confident.any() else None
    if quantized and min_agreement is None and confident_agreement is not None:
        rule = "confident"
        passed = confident_agreement >= CONFIDENT_AGREEMENT
    elif quantized and min_agreement is None and labelled:
        rule = "accuracy"  # no confident row: the integrity gate's accuracy drop is the judge
        passed = True
    else:
        rule = "all rows"
        min_agreement = MIN_AGREEMENT if min_agreement is None else min_agreement
        passed = agreement >= min_agreement
    return {
        "n_examples": int(len(agree)),
        "max_abs_logit_diff": float(difference.max()) if finite and len(agree) else float("inf"),
        "mean_abs_logit_diff": float(difference.mean()) if finite and len(agree) else float("inf"),
        "agreement": agreement,
        "disagreements": int((~agree).sum()),
        "min_agreement": min_agreement if rule == "all rows" else None,
        "confident": {"probability_at_least": CONFIDENT_PROBABILITY, "rows": int(confident.sum()),
                      "agreement": confident_agreement, "disagreements": int((~agree[confident]).sum()),
                      "min_agreement": CONFIDENT_AGREEMENT},
        "rule": rule,
        "passed": bool(finite and len(agree) > 0 and passed),
    }


def check_parity(reference, candidate, texts: list[str], pairs: list[str] | None = None,
                 min_agreement: float | None = MIN_AGREEMENT, quantized: bool = False, labelled: bool = False) -> dict:
    """Run both :class:`~tuneforge.apps.export.runtime.TextClassifier` on ``texts`` and compare (never raises
    on a failed check: the caller writes the report first, then raises :class:`ParityError`)."""
    return compare_logits(reference.logits(texts, pairs), candidate.logits(texts, pairs), min_agreement, quantized,
                          labelled)


def describe_parity(result: dict) -> str:
    """The parity result in words: raw agreement, and the confident rows' agreement with its threshold."""
    confident = result.get("confident") or {}
    text = f"predictions agree on {result['agreement']:.2%} of {result['n_examples']} validation rows"
    if result.get("rule") == "confident":
        text += (f" and on {confident['agreement']:.2%} of the {confident['rows']} where the fp32 model is at least "
                 f"{confident['probability_at_least']:.0%} confident (needed {confident['min_agreement']:.0%} there)")
    elif result.get("rule") == "accuracy":
        text += (f"; no row where the fp32 model is at least {confident['probability_at_least']:.0%} confident, so "
                 "the validation accuracy drop alone judges")
    elif result.get("min_agreement") is not None:
        text += f" (needed {result['min_agreement']:.0%})"
    return text


def failure_message(result: dict, where: str) -> str:
    return (f"export failed its parity check: {describe_parity(result)}; max |Δlogit| "
            f"{result['max_abs_logit_diff']:.4g}; details in {where}. Do not ship this model")


def gate_key(out: Path, run_dir: Path) -> str:
    """The key an export's integrity-gate entry is recorded under in the run's ``artifacts.json``."""
    return f"export:{out.name}" if out.parent == run_dir / "export" else f"export:{out}"


def raise_if_checks_failed(out: Path, report: dict, parity: dict, gate: dict, run_dir: Path,
                           parity_message: Callable[[dict, Path], str] = failure_message) -> None:
    """After the parity check and the integrity gate: when either failed, mark ``export_report.json`` failed
    (the folder stays for inspection) and raise ParityError (``parity_message``, naming a gate failure too) or
    IntegrityError."""
    if parity["passed"] and gate["passed"]:
        return
    report["status"] = "failed"
    write_report(out, report)
    if not parity["passed"]:
        also = f" The integrity gate also failed: {'; '.join(gate['probe']['problems'])}." if not gate["passed"] else ""
        raise ParityError(parity_message(parity, out / REPORT_NAME) + "." + also)
    raise IntegrityError(export_failure_message(gate, out, run_dir))
