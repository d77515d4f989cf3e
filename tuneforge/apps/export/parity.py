"""Parity: does the exported model give the same answers as the run's PyTorch model?

Both classify the same rows (a sample of the run's validation split); we report the largest absolute
logit difference and the share of rows where the predicted labels agree. Agreement below the threshold
(default 99%) fails the export.
"""

from __future__ import annotations

import numpy as np

from tuneforge.base.errors import UserError

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
