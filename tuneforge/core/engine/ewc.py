"""Elastic weight consolidation (Kirkpatrick et al., 2017) for ``continual.strategy: ewc``.

Once, before the new training starts, the diagonal of the (empirical) Fisher information of the old task is
estimated on a sample of the old training rows: ``F_i = mean over rows of (d log p(y | x) / d theta_i)^2``, one
row at a time (a batch's gradient squared would underestimate it). The new training then adds
``lambda / 2 * sum_i F_i * (theta_i - theta_old_i)^2`` to every batch's loss: the weights the old labels
depended on are held near their old values, the others move freely.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class ElasticWeightConsolidation:
    """The Fisher diagonal and anchor values of ``parameters``, and the penalty of moving away from them."""

    def __init__(self, parameters: list[tuple[str, nn.Parameter]], strength: float) -> None:
        self.parameters = [(name, p) for name, p in parameters if p.requires_grad]
        self.strength = strength
        self.anchors = {name: p.detach().clone() for name, p in self.parameters}
        self.fisher = {name: torch.zeros_like(p) for name, p in self.parameters}
        self.rows = 0

    def estimate(self, model: nn.Module, rows: Iterable[tuple[dict[str, torch.Tensor], int]], label_count: int) -> None:
        """Accumulate the Fisher diagonal over ``rows`` (one example's model inputs and its label each), the
        log-likelihood taken over the first ``label_count`` labels only (the old ones: the head's new rows get no
        Fisher information and learn freely). The model is in eval mode meanwhile (no dropout)."""
        was_training = model.training
        model.eval()
        for inputs, label in rows:
            model.zero_grad(set_to_none=True)
            logits = model(**inputs).logits[:, :label_count].float()
            log_likelihood = torch.log_softmax(logits, dim=-1)[0, label]
            log_likelihood.backward()
            for name, p in self.parameters:
                if p.grad is not None:
                    self.fisher[name] += p.grad.detach() ** 2
            self.rows += 1
        model.zero_grad(set_to_none=True)
        if self.rows:
            for name in self.fisher:
                self.fisher[name] /= self.rows
        model.train(was_training)

    def penalty(self) -> torch.Tensor:
        """``strength / 2 * sum_i F_i (theta_i - theta_old_i)^2`` over the parameters."""
        total = None
        for name, p in self.parameters:
            term = (self.fisher[name] * (p - self.anchors[name]) ** 2).sum()
            total = term if total is None else total + term
        return 0.5 * self.strength * total if total is not None else torch.zeros(())

    def fisher_total(self) -> float:
        """Sum of the Fisher diagonal (how much the old task constrains the weights), for the log."""
        return float(sum(f.sum() for f in self.fisher.values()))
