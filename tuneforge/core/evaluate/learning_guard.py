"""Did a run learn anything? Its validation metrics against what a model that learned nothing scores.

What "learned nothing" scores is the task's to say (:meth:`tuneforge.core.tasks.base.Task.no_learning_baseline`:
the metrics of predicting the training labels' priors for every row — the majority class, each label's base
rate — or, for a language model, the untrained model's validation loss). This module only compares numbers: it
knows no task, model or loop. A metric counts as learned when it beats its baseline by more than the noise of
the validation split (about one standard error of a rate measured on ``n`` rows, 1/sqrt(n), and never less than
a floor); the run learned when any of the task's metrics did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# The least improvement over the no-learning score that counts, per metric. ROC-AUC: 0.5 +- 0.05 is chance in
# practice (a collapsed multi-label model scores 0.52, issue 24); rates: one point.
MARGIN_FLOOR = {"roc_auc": 0.05}
DEFAULT_MARGIN_FLOOR = 0.01


@dataclass(frozen=True)
class LearningSignal:
    """A validation metric that shows learning, and which way is better."""

    metric: str
    higher_is_better: bool = True


@dataclass
class LearningVerdict:
    """The comparison of one set of validation metrics with the no-learning baseline."""

    learned: bool
    checked: bool
    compared: list[dict[str, Any]] = field(default_factory=list)

    def line(self) -> str:
        """One sentence for the log, the summary, the report and ``run.json``."""
        if not self.checked:
            return "learning not checked: no no-learning baseline for this run"
        shown = ", ".join(f"{c['metric']} {c['value']:.4f} (no learning: {c['baseline']:.4f})" for c in self.compared)
        if self.learned:
            return f"learned: {shown}"
        return f"did not learn: the model is no better than one that learned nothing ({shown})"

    def as_facts(self, fixes: tuple[str, ...] | list[str]) -> dict[str, Any]:
        """What ``run.json`` keeps under ``learning``."""
        facts: dict[str, Any] = {"learned": self.learned, "checked": self.checked, "line": self.line(),
                                 "compared": self.compared}
        if self.checked and not self.learned:
            facts["likely_fixes"] = list(fixes)
        return facts


def margin_for(metric: str, n_examples: int | None) -> float:
    """How far above its baseline a metric must be to count as learning: the larger of the metric's floor and
    1/sqrt(n) (about two standard errors of a rate near 0.5 measured on ``n`` rows). Losses: any decrease."""
    if metric in ("loss", "perplexity"):
        return 0.0
    floor = MARGIN_FLOOR.get(metric, DEFAULT_MARGIN_FLOOR)
    return max(floor, 1 / math.sqrt(n_examples)) if n_examples else floor


def judge_learning(metrics: dict[str, Any], baseline: dict[str, Any],
                   signals: tuple[LearningSignal, ...]) -> LearningVerdict:
    """Compare ``metrics`` (one validation pass) with ``baseline`` (what learning nothing scores) on ``signals``.

    Unchecked (``checked`` False, counted as learned) when no signal has a number on both sides."""
    n_examples = metrics.get("n_examples") if isinstance(metrics.get("n_examples"), int) else None
    compared = []
    for signal in signals:
        value, reference = metrics.get(signal.metric), baseline.get(signal.metric)
        if not isinstance(value, (int, float)) or not isinstance(reference, (int, float)):
            continue
        if not (math.isfinite(value) and math.isfinite(reference)):
            continue
        margin = margin_for(signal.metric, n_examples)
        better = (value > reference + margin) if signal.higher_is_better else (value < reference - margin)
        compared.append({"metric": signal.metric, "value": float(value), "baseline": float(reference),
                         "margin": margin, "better": better})
    if not compared:
        return LearningVerdict(learned=True, checked=False)
    return LearningVerdict(learned=any(c["better"] for c in compared), checked=True, compared=compared)
