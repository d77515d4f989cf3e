"""Parity: does the exported model give the same answers as the run's PyTorch model?

Both classify the same rows (a sample of the run's validation split); we report the largest absolute
logit difference and the share of rows where the predicted labels agree. Agreement below the threshold
(default 99%) fails the export.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from tuneforge.base.errors import UserError
from tuneforge.base.integrity import IntegrityError, export_failure_message
from tuneforge.apps.export.runtime import REPORT_NAME, write_report

MIN_AGREEMENT = 0.99


class ParityError(UserError):
    """The exported model disagrees with the run's model on too many rows."""


def compare_logits(reference: np.ndarray, candidate: np.ndarray, min_agreement: float = MIN_AGREEMENT) -> dict:
    """max/mean |Δlogit| and prediction agreement between two ``[rows, labels]`` logit arrays."""
    if reference.shape != candidate.shape:
        raise ParityError(f"parity: the exported model returns logits of shape {candidate.shape}, the run's model "
                          f"{reference.shape}")
    difference = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    finite = bool(np.isfinite(candidate).all())
    agree = reference.argmax(axis=1) == candidate.argmax(axis=1)
    agreement = float(agree.mean()) if len(agree) else 0.0
    return {
        "n_examples": int(len(agree)),
        "max_abs_logit_diff": float(difference.max()) if finite and len(agree) else float("inf"),
        "mean_abs_logit_diff": float(difference.mean()) if finite and len(agree) else float("inf"),
        "agreement": agreement,
        "disagreements": int((~agree).sum()),
        "min_agreement": min_agreement,
        "passed": bool(finite and len(agree) > 0 and agreement >= min_agreement),
    }


def check_parity(reference, candidate, texts: list[str], pairs: list[str] | None = None,
                 min_agreement: float = MIN_AGREEMENT) -> dict:
    """Run both :class:`~tuneforge.apps.export.runtime.TextClassifier` on ``texts`` and compare (never raises
    on a failed check: the caller writes the report first, then raises :class:`ParityError`)."""
    return compare_logits(reference.logits(texts, pairs), candidate.logits(texts, pairs), min_agreement)


def failure_message(result: dict, where: str) -> str:
    return (f"export failed its parity check: predictions agree on {result['agreement']:.2%} of "
            f"{result['n_examples']} validation rows (needed {result['min_agreement']:.0%}; max |Δlogit| "
            f"{result['max_abs_logit_diff']:.4g}); details in {where}. Do not ship this model")


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
