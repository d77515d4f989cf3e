"""The finishing step of ``tuneforge auto``: the winner trained again on all the training rows, as a normal run,
and the "model soup" — the uniform average of its last epochs' weights (same run, same architecture) — kept
only when it scores better on the validation split than the epoch the loop would keep.

The averaging runs inside the one training loop through its hooks (:class:`~tuneforge.core.engine.hooks.LoopHooks`),
so the weights saved, read back and checked by the integrity gate are the ones chosen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tuneforge.base.recipe import LOWER_IS_BETTER
from tuneforge.core.engine.checkpoint import snapshot_trainable
from tuneforge.core.engine.hooks import LoopHooks
from tuneforge.core.methods import Method

SOUP_EPOCHS = 3  # the last epochs averaged


@dataclass
class SoupOutcome:
    """What the weight average did, for auto.md."""

    epochs: list[int] = field(default_factory=list)
    kept_metric: float | None = None
    soup_metric: float | None = None
    used: bool = False
    reason: str = "the finish trained one epoch, so there was nothing to average"

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class WeightAverage(LoopHooks):
    """Keeps the trained weights of the last :data:`SOUP_EPOCHS` epochs and, before the model is saved, puts their
    average in when it validates better on ``metric``."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.snapshots: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.outcome = SoupOutcome()

    def epoch_validated(self, model: nn.Module, method: Method, epoch: int, metrics: dict[str, Any]) -> None:
        self.snapshots.append((epoch, snapshot_trainable(method, model)))
        del self.snapshots[:-SOUP_EPOCHS]

    def final_weights(self, model: nn.Module, method: Method, best_metrics: dict[str, Any],
                      validate) -> dict[str, Any] | None:
        outcome = self.outcome
        if len(self.snapshots) < 2:
            return None
        outcome.epochs = [epoch for epoch, _ in self.snapshots]
        kept = snapshot_trainable(method, model)
        average = {name: torch.stack([state[name].float() for _, state in self.snapshots]).mean(0)
                   for name in kept}
        load(model, average)
        metrics = validate()
        outcome.kept_metric, outcome.soup_metric = best_metrics.get(self.metric), metrics.get(self.metric)
        lower = self.metric in LOWER_IS_BETTER
        soup, kept_score = outcome.soup_metric, outcome.kept_metric
        better = (soup is not None and math.isfinite(soup)
                  and (kept_score is None or (soup < kept_score if lower else soup > kept_score)))
        epochs = ", ".join(map(str, outcome.epochs))
        if better:
            outcome.used = True
            outcome.reason = (f"the average of epochs {epochs} scored validation {self.metric} "
                              f"{outcome.soup_metric:.4f} against {outcome.kept_metric:.4f} for the epoch kept: "
                              "the average is the saved model.")
            return metrics
        load(model, kept)
        outcome.reason = (f"the average of epochs {epochs} scored validation {self.metric} {outcome.soup_metric:.4f}, "
                          f"not better than {outcome.kept_metric:.4f} for the epoch kept: that epoch is saved.")
        return None


def load(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` (trainable weights by name) into ``model``."""
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            parameters[name].copy_(value.to(parameters[name].device, parameters[name].dtype))


@dataclass
class FinishPlan:
    """The finishing run's recipe keys and why."""

    overrides: list[str]
    epochs: int
    train_minutes: float
    mode: str
    reasons: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
