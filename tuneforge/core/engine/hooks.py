"""The few points where an extension may change what the training loop does, without the loop knowing it.

:class:`LoopHooks` does what the loop would do without it (ask the task); an extension overrides what it
changes. Continual fine-tuning (:mod:`tuneforge.core.engine.continual`) is the one extension: it loads the
previous run's model, mixes old rows into the batches and adds the EWC penalty to the loss.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tuneforge.base.recipe import Recipe
from tuneforge.core.methods import Method
from tuneforge.core.tasks import Task


class LoopHooks:
    """Pass-through hooks: every method returns what the loop computes without an extension."""

    def load_model(self, task: Task, recipe: Recipe, label_names: list[str]) -> tuple[Any, nn.Module]:
        """(tokenizer, model) the run starts from; default the task's pretrained model with a fresh head."""
        return task.load_model(recipe, label_names)

    def model_ready(self, task: Task, recipe: Recipe, model: nn.Module, method: Method, tokenizer: Any,
                    device: torch.device, log) -> None:
        """Called once the method has prepared the model and it sits on ``device``, before the first step."""

    def batches_per_epoch(self, task: Task, recipe: Recipe, encoded, batch_size: int) -> int:
        """How many batches :meth:`training_batches` makes in one epoch."""
        return task.batches_per_epoch(recipe, encoded, batch_size)

    def training_batches(self, task: Task, recipe: Recipe, encoded, batch_size: int,
                         generator: random.Random) -> list[list[int]]:
        """One epoch's batches of example indices, drawn from ``generator`` only (resume replays them)."""
        return task.training_batches(recipe, encoded, batch_size, generator)

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to every training batch's loss (None: nothing added)."""
        return None

    def epoch_validated(self, model: nn.Module, method: Method, epoch: int, metrics: dict[str, Any]) -> None:
        """Called after each epoch's validation (1-based ``epoch``) while ``model`` holds that epoch's weights."""

    def final_weights(self, model: nn.Module, method: Method, best_metrics: dict[str, Any],
                      validate: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """Called once the kept epoch's weights are back in ``model``, before it is saved. An extension may put
        other weights in (``tuneforge auto``: the average of the last epochs' weights, when ``validate()`` says
        it is better); it returns their validation metrics, or None when the model is left as it was."""
        return None
