"""The interface every task type implements; the default methods are those of single-label classification.

A task owns everything that differs between task types — reading the data, loading the model, encoding,
batching, the loss, validation metrics, how the model is saved, read back and evaluated — so that the one
training loop (:mod:`tuneforge.core.engine.loop`) never branches on a task's name. What a task supports is
declared as data on its class (``supports_*``, ``methods``, ``export_formats``), read by the commands and
the recipe checks instead of testing task names.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from tuneforge.base.errors import UserError
from tuneforge.base.integrity import save_and_gate
from tuneforge.base.recipe import EarlyStoppingConfig, Recipe, TrainConfig
from tuneforge.core.data.batching import iterate_batches, length_grouped_batches, shuffled_batches
from tuneforge.core.evaluate.learning_guard import LearningSignal
from tuneforge.core.evaluate.metrics import classification_metrics
from tuneforge.core.methods import Method, method_spec
from tuneforge.core.methods.layout import load_plain_model

# Rows of the validation split the integrity gate probes the saved model with.
PROBE_ROWS = 32


@dataclass(frozen=True)
class ModelSelection:
    """Which epoch's weights a run keeps: the best ``metric`` (``keep_best``) or the last epoch; stop after
    ``patience`` epochs without improvement (None: never stop early)."""

    metric: str
    higher_is_better: bool
    patience: int | None
    keep_best: bool


class Task:
    """What the loop and the commands ask of a task type (see :mod:`tuneforge.core.tasks`).

    ``data`` objects have ``label_names``, ``train``, ``validation``, ``test`` (or None) and ``notes``; an
    encoded split has ``len()`` and ``lengths`` and goes through :func:`tuneforge.core.data.batching.iterate_batches`.
    """

    name: ClassVar[str]
    # The frozen-prefix activation cache replays token embeddings: text tasks only.
    supports_activation_cache: ClassVar[bool] = True
    # distill: a teacher's logits over this task's labels (classification-style tasks).
    supports_distillation: ClassVar[bool] = True
    # continual (`tuneforge train --from RUN_DIR`): start from a finished run, grow its head, replay, EWC.
    supports_continual: ClassVar[bool] = False
    # The methods this task is checked with (None: every registered method).
    methods: ClassVar[tuple[str, ...] | None] = None
    # `tuneforge generate`: whether a run of this task writes text.
    generates_text: ClassVar[bool] = False
    # `tuneforge export --format`: what a run of this task can be exported to.
    export_formats: ClassVar[tuple[str, ...]] = ()
    # `tuneforge predict/eval --backend`: what runs this task's predict and eval ("onnx": the run's ONNX export).
    inference_backends: ClassVar[tuple[str, ...]] = ("torch",)
    # The metrics the end-of-run summary prints, in order (those present).
    summary_keys: ClassVar[tuple[str, ...]] = ("accuracy", "f1_micro", "f1_macro", "f1_weighted", "precision_macro",
                                               "recall_macro", "roc_auc")
    # The validation metric `compare` and `runs` rank runs by, unless the recipe names one.
    main_metric: ClassVar[str] = "accuracy"
    # `tuneforge search`: whether trials of this task can be searched, and the metric they optimise when the
    # recipe keeps no best epoch by its own early-stopping metric.
    supports_search: ClassVar[bool] = False
    search_metric: ClassVar[str] = "f1_macro"
    # The learning guard (tuneforge.core.evaluate.learning_guard): the validation metrics that show learning, compared
    # after every validation with :meth:`no_learning_baseline`; and what to try when a run did not learn.
    learning_signals: ClassVar[tuple[LearningSignal, ...]] = (
        LearningSignal("roc_auc"), LearningSignal("accuracy"), LearningSignal("f1_macro"))
    learning_fixes: ClassVar[tuple[str, ...]] = (
        "check that the labels belong to the texts (data inspect; a shuffled label column learns nothing)",
        "train longer (train.epochs) or with a larger train.learning_rate; a frozen body (method freeze, lora) "
        "usually needs 10x the full fine-tuning rate",
        "rare classes: train.class_weights: balanced")

    def check_recipe(self, recipe: Recipe) -> None:
        """Raise UserError when the recipe asks for something this task does not support (before any data is read)."""
        if self.methods is not None and recipe.method.name not in self.methods:
            raise UserError(f"method.name: {recipe.method.name} is not supported yet for task {recipe.task}; "
                            f"choose one of {', '.join(self.methods)}")
        if recipe.distill is not None and not self.supports_distillation:
            raise UserError(f"distill: not supported yet for task {recipe.task}; remove the distill section")
        if getattr(recipe, "continual", None) is not None and not self.supports_continual:
            raise UserError(f"continual (--from): not supported yet for task {recipe.task}; remove the continual "
                            "section")

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

    def batches(self, encoded, index_lists: list[list[int]], pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
        """Model inputs (with ``labels``) for each list of example indices, in order."""
        return iterate_batches(encoded, index_lists, pad_id)

    def before_training(self, recipe: Recipe, data, model: nn.Module, tokenizer, device: torch.device,
                        autocast_dtype: torch.dtype | None, run_dir: Path, log) -> dict[str, Any]:
        """Work on the untrained model, before the method changes it (generative tasks measure the base model);
        returns facts for ``run.json``. Default: nothing."""
        return {}

    def no_learning_baseline(self, recipe: Recipe, data, facts: dict[str, Any]) -> dict[str, Any]:
        """The validation metrics of a model that learned nothing: here the training labels' class shares
        predicted for every validation row (accuracy of the majority class, ROC-AUC 0.5). ``facts``: what
        :meth:`before_training` measured."""
        prior = np.bincount(np.asarray(data.train.labels, dtype=np.int64), minlength=len(data.label_names))
        gold = np.asarray(data.validation.labels, dtype=np.int64)
        probabilities = np.tile(prior / max(prior.sum(), 1), (len(gold), 1))
        return classification_metrics(gold, probabilities, data.label_names, per_class=False)

    def optimizer_config(self, recipe: Recipe) -> TrainConfig:
        """The ``train`` settings the optimizer is built from (learning rates, weight decay). Default: the
        recipe's; a task may fill in its own defaults for what the recipe leaves unset."""
        return recipe.train

    def encoded_facts(self, recipe: Recipe, encoded: dict[str, Any], log) -> dict[str, Any]:
        """Facts about the encoded splits for ``run.json`` (e.g. truncation); may raise UserError when nothing
        is left to train on. Default: nothing (the data summary says it all)."""
        return {}

    def loss_functions(self, recipe: Recipe, data, device: torch.device) -> tuple[nn.Module, nn.Module]:
        """(training loss, validation loss), each called as ``loss(logits, labels)``."""
        raise NotImplementedError

    def validation_metrics(self, model: nn.Module, encoded, label_names: list[str], batch_size: int, pad_id: int,
                           device: torch.device, loss_fn: nn.Module, autocast_dtype: torch.dtype | None,
                           before_batch: Callable[[list[int]], None] | None = None) -> dict[str, Any]:
        """Metrics of one validation pass, with ``loss`` and at least ``accuracy`` and ``f1_macro``."""
        raise NotImplementedError

    def describe_metrics(self, metrics: dict[str, Any]) -> str:
        """The validation metrics of one epoch in a few words, for the log."""
        return f"validation loss {metrics['loss']:.4f}, accuracy {metrics['accuracy']:.4f}, f1_macro {metrics['f1_macro']:.4f}"

    def model_selection(self, stopping: EarlyStoppingConfig | None) -> ModelSelection:
        """``train.early_stopping``: keep the best epoch by its metric, stop after its patience; without it the
        last epoch is kept."""
        if stopping is None:
            return ModelSelection("loss", False, None, keep_best=False)
        return ModelSelection(stopping.metric, stopping.higher_is_better, stopping.patience, keep_best=True)

    def read_plain_model(self, folder: Path) -> nn.Module:
        """A plain model folder this task's runs write (``run/model``), in eval mode."""
        return load_plain_model(folder)

    def load_trained(self, run_dir: Path, recipe: Recipe) -> nn.Module:
        """The trained model of a run folder, as ``predict``/``eval`` and the integrity gate read it."""
        return method_spec(recipe.method.name).load(run_dir, recipe.method, self.read_plain_model).eval()

    def save(self, recipe: Recipe, method: Method, model: nn.Module, tokenizer, run_dir: Path, probe_set,
             pad_id: int, device: torch.device) -> nn.Module:
        """Save through the method and pass the integrity gate (:func:`tuneforge.base.integrity.save_and_gate`):
        the saved-for-deployment module, and the run read back from disk, must answer a probe batch of up to
        ``PROBE_ROWS`` validation rows as the trained model did. Returns the module that stands for the saved run."""
        probe = next(iterate_batches(probe_set, [list(range(min(len(probe_set), PROBE_ROWS)))], pad_id))
        probe_labels = probe.pop("labels").numpy()
        batch = {key: value.to(device) for key, value in probe.items()}
        return save_and_gate(method, model, tokenizer, run_dir, batch, probe_labels,
                             reload=lambda: self.load_trained(run_dir, recipe),
                             reloaded_with=f"{type(method).__name__}.load (as tuneforge predict and eval load it)",
                             max_metric_drop=recipe.export.max_metric_drop).saved

    def summary_lines(self, summary: dict[str, dict[str, Any]], facts: dict[str, Any]) -> list[str]:
        """The end-of-run lines under "run ... finished": each split's :attr:`summary_keys`."""
        lines = []
        for split, metrics in summary.items():
            values = ", ".join(f"{k} {metrics[k]:.4f}" for k in self.summary_keys if metrics.get(k) is not None)
            lines.append(f"  {split:<10} {values} (n={metrics.get('n_examples', '?')})")
        return lines

    def after_training(self, recipe: Recipe, data, result, run_dir: Path, log) -> dict[str, Any]:
        """Work once the best model is saved (evaluate ``data.test`` into ``run_dir/eval/test``); returns the
        summary's extra entries, e.g. ``{"test": metrics}``."""
        raise NotImplementedError

    def eval_command(self, run_dir: str, data_file: str) -> int:
        """``tuneforge eval RUN FILE`` for a run of this task: print the metrics, write ``RUN/eval/<stem>/``."""
        raise UserError(f"eval: not supported yet for task {self.name} runs")

    def predict_command(self, run_dir: str, text: str | None, text_pair: str | None, input_file: str | None,
                        output_file: str | None, top: int) -> int:
        """``tuneforge predict RUN`` for a run of this task (``--text`` or ``--input``/``--output``)."""
        raise UserError(f"predict: not supported yet for task {self.name} runs")

    def data_summary(self, data) -> dict[str, Any]:
        """What ``run.json`` keeps about the data: label counts per split and the notes (splits, balance, augment)."""
        splits = {"train": data.train, "validation": data.validation, "test": data.test}
        counts = {name: self.label_counts(split, data.label_names) for name, split in splits.items() if split is not None}
        return {"label_counts": counts, "notes": list(data.notes)}

    def label_counts(self, split, label_names: list[str]) -> dict[str, int]:
        """Examples per label (``run.json``)."""
        counts = np.bincount(np.asarray(split.labels, dtype=np.int64), minlength=len(label_names))
        return {label: int(n) for label, n in zip(label_names, counts)}
