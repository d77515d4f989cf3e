"""The interface every task type implements; the default methods are those of single-label classification."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from tuneforge.base.recipe import Recipe
from tuneforge.core.data.batching import length_grouped_batches, shuffled_batches


class Task:
    """What the loop and the commands ask of a task type (see :mod:`tuneforge.core.tasks`).

    ``data`` objects have ``label_names``, ``train``, ``validation``, ``test`` (or None) and ``notes``; an
    encoded split has ``len()`` and ``lengths`` and goes through :func:`tuneforge.core.data.batching.iterate_batches`.
    """

    name: ClassVar[str]
    # The frozen-prefix activation cache replays token embeddings: text tasks only.
    supports_activation_cache: ClassVar[bool] = True

    def load_data(self, recipe: Recipe):
        """Read and check every split of the recipe's data (no model weights loaded)."""
        raise NotImplementedError

    def check_model_config(self, recipe: Recipe, model_config: Any) -> None:
        """Raise UserError when the recipe's model or method cannot serve this task (before any weights load)."""

    def load_model(self, recipe: Recipe, label_names: list[str]) -> tuple[Any, nn.Module]:
        """(preprocessor, model with a fresh head for ``label_names``); the preprocessor has ``pad_token_id``
        and ``save_pretrained`` (a tokenizer, or an image processor wrapped to look like one)."""
        raise NotImplementedError

    def encode(self, preprocessor: Any, split, recipe: Recipe, training: bool):
        """The split as model inputs; ``training``: the train split (augmented where the task augments)."""
        raise NotImplementedError

    def training_batches(self, recipe: Recipe, encoded, batch_size: int, generator: random.Random) -> list[list[int]]:
        """One epoch's training batches (lists of example indices), every example once, drawn from ``generator``
        only (a resumed run replays them): length-grouped, or plainly shuffled with ``train.group_by_length: false``.
        Multitask overrides it: each batch from one task, in the order ``multitask.sampling`` sets."""
        return (length_grouped_batches(encoded.lengths, batch_size, generator) if recipe.train.group_by_length
                else shuffled_batches(len(encoded), batch_size, generator))

    def batches_per_epoch(self, recipe: Recipe, encoded, batch_size: int) -> int:
        """How many batches :meth:`training_batches` makes (the LR schedule's length)."""
        return math.ceil(len(encoded) / batch_size)

    def loss_functions(self, recipe: Recipe, data, device: torch.device) -> tuple[nn.Module, nn.Module]:
        """(training loss, validation loss), each called as ``loss(logits, labels)``."""
        raise NotImplementedError

    def validation_metrics(self, model: nn.Module, encoded, label_names: list[str], batch_size: int, pad_id: int,
                           device: torch.device, loss_fn: nn.Module, autocast_dtype: torch.dtype | None,
                           before_batch: Callable[[list[int]], None] | None = None) -> dict[str, Any]:
        """Metrics of one validation pass, with ``loss`` and at least ``accuracy`` and ``f1_macro``."""
        raise NotImplementedError

    def after_training(self, recipe: Recipe, data, result, run_dir: Path, log) -> dict[str, Any]:
        """Work once the best model is saved (evaluate ``data.test`` into ``run_dir/eval/test``); returns the
        summary's extra entries, e.g. ``{"test": metrics}``."""
        raise NotImplementedError

    def label_counts(self, split, label_names: list[str]) -> dict[str, int]:
        """Examples per label (``run.json``)."""
        counts = np.bincount(np.asarray(split.labels, dtype=np.int64), minlength=len(label_names))
        return {label: int(n) for label, n in zip(label_names, counts)}
