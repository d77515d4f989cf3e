"""The data of ``task: multitask``: one set of checked splits per task, the tasks' splits concatenated into
one index space for the training loop, and the per-epoch batch schedule across tasks.

Each task is read and checked by the loader of its own kind (:func:`tuneforge.core.data.examples.load_classification_data`
for ``single_label``, :func:`tuneforge.core.data.multilabel.load_multilabel_data` for ``multi_label``), so every
file, column and label check of those tasks applies, with the task named in the message. Every training batch
holds examples of one task only (:func:`epoch_batches`); the model's forward gets the batch's task as
``task_index`` and the loss reads it from the first column of ``labels`` (:func:`collate_multitask`).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from tuneforge.base.recipe import DataConfig, Recipe, TaskSpec
from tuneforge.core.data.batching import EncodedSplit, collate, length_grouped_batches, shuffled_batches
from tuneforge.core.data.splits import Split
from tuneforge.base.errors import UserError
from tuneforge.core.data.examples import load_classification_data
from tuneforge.core.data.multilabel import load_multilabel_data

# Filler of the unused label columns of a batch that mixes tasks (only the save check's probe batch can).
LABEL_PADDING = -100


@dataclass
class TaskData:
    """One task's checked splits and label names (index = the head's output column)."""

    spec: TaskSpec
    data_config: DataConfig
    label_names: list[str]
    train: Split
    validation: Split
    test: Split | None


@dataclass
class MultiTaskSplit:
    """The same split (train, validation or test) of every task; ``parts[i]`` is task i's (None: it has none)."""

    name: str
    parts: list[Split | None]

    def __len__(self) -> int:
        return sum(len(part) for part in self.parts if part is not None)


@dataclass
class MultiTaskData:
    """What the loop and the commands see of a multitask job (the shape of ``ClassificationData``).

    ``label_names`` qualifies every head's labels with its task (``sentiment:positive``): it is the run's
    ``labels.json``; the structure itself is in ``tasks``."""

    tasks: list[TaskData]
    train: MultiTaskSplit
    validation: MultiTaskSplit
    test: MultiTaskSplit | None
    notes: list[str] = field(default_factory=list)

    @property
    def label_names(self) -> list[str]:
        return qualified_label_names([(task.spec.name, task.label_names) for task in self.tasks])


def qualified_label_names(tasks: list[tuple[str, list[str]]]) -> list[str]:
    return [f"{name}:{label}" for name, labels in tasks for label in labels]


def task_data_config(recipe: Recipe, spec: TaskSpec) -> DataConfig:
    """The ``data:`` section as this task sees it: its own files and columns over the shared defaults."""
    shared = recipe.data
    own_files = spec.train is not None
    return DataConfig(
        train=spec.train or shared.train,
        # A task with its own train file never borrows the shared validation/test files (other rows, other labels).
        validation=spec.validation if own_files or spec.validation else shared.validation,
        test=spec.test if own_files or spec.test else shared.test,
        text_column=spec.text_column or shared.text_column,
        text_pair_column=spec.text_pair_column or shared.text_pair_column,
        label_column=spec.label_column or shared.label_column,
        label_delimiter=spec.label_delimiter or shared.label_delimiter,
        validation_fraction=shared.validation_fraction,
        max_length=shared.max_length,
        on_empty=shared.on_empty,
    )


def load_multitask_data(recipe: Recipe) -> MultiTaskData:
    """Read and check every task's splits; a problem is reported with the task's name and position."""

    shared = recipe.data
    if shared.balance != "none" or shared.augment is not None:
        raise UserError("data.balance and data.augment are not supported yet for task multitask; remove them")
    if recipe.train.class_weights != "none":
        raise UserError("train.class_weights is not supported yet for task multitask; use tasks[].weight to "
                        "weigh whole tasks")
    tasks: list[TaskData] = []
    notes: list[str] = []
    for position, spec in enumerate(recipe.tasks or []):
        config = task_data_config(recipe, spec)
        try:
            data = (load_classification_data(config, recipe.train.seed) if spec.type == "single_label"
                    else load_multilabel_data(config, recipe.train.seed))
        except UserError as error:
            raise UserError(f"tasks[{position}] ({spec.name}): {error}") from None
        tasks.append(TaskData(spec, config, data.label_names, data.train, data.validation, data.test))
        notes += [f"{spec.name}: {note}" for note in data.notes]
    test_parts = [task.test for task in tasks]
    return MultiTaskData(
        tasks=tasks,
        train=MultiTaskSplit("train", [task.train for task in tasks]),
        validation=MultiTaskSplit("validation", [task.validation for task in tasks]),
        test=MultiTaskSplit("test", test_parts) if any(part is not None for part in test_parts) else None,
        notes=notes)


# ----------------------------------------------------------------------------- encoded splits


class MultiTaskEncoded:
    """The tasks' encoded splits end to end: example ``offsets[t] + i`` is task t's example i.

    Batches go through :func:`collate_multitask`; :meth:`task_view` gives one task's examples alone (with its
    plain labels) for evaluation."""

    def __init__(self, parts: list[EncodedSplit | None], label_widths: list[int], pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id
        self.parts = [part if part is not None else EncodedSplit([], None, []) for part in parts]
        self.label_widths = label_widths  # 1 for a single-label task, its label count for a multi-label one
        sizes = [len(part) for part in self.parts]
        self.offsets = [int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]])] if sizes else []
        self.task_of = [t for t, size in enumerate(sizes) for _ in range(size)]

    def __len__(self) -> int:
        return len(self.task_of)

    @property
    def lengths(self) -> list[int]:
        return [length for part in self.parts for length in part.lengths]

    def task_indices(self, task: int) -> list[int]:
        return list(range(self.offsets[task], self.offsets[task] + len(self.parts[task])))

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return collate_multitask(self, indices, self.pad_token_id)

    def task_view(self, task: int) -> "TaskView":
        return TaskView(self, task)


def collate_multitask(encoded: MultiTaskEncoded, indices: list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Padded inputs plus ``task_index`` (one per row) and ``labels``: column 0 the task, then the task's label
    (single-label) or multi-hot row (multi-label), padded with -100 to the widest task of the batch."""
    pieces = [(encoded.task_of[i], i - encoded.offsets[encoded.task_of[i]]) for i in indices]  # (task, row in task)
    width = max(encoded.label_widths[task] for task, _ in pieces)
    tokens = EncodedSplit(input_ids=[encoded.parts[t].input_ids[i] for t, i in pieces],
                          token_type_ids=([encoded.parts[t].token_type_ids[i] for t, i in pieces]
                                          if all(encoded.parts[t].token_type_ids for t, _ in pieces) else None),
                          labels=[0] * len(pieces))
    batch = collate(tokens, list(range(len(pieces))), pad_token_id)
    labels = torch.full((len(pieces), 1 + width), LABEL_PADDING, dtype=torch.long)
    for row, (task, local) in enumerate(pieces):
        value = np.atleast_1d(np.asarray(encoded.parts[task].labels[local], dtype=np.int64))
        labels[row, 0] = task
        labels[row, 1:1 + len(value)] = torch.from_numpy(value)
    batch["labels"] = labels
    batch["task_index"] = torch.tensor([task for task, _ in pieces], dtype=torch.long)
    return batch


class TaskView:
    """One task's examples of a :class:`MultiTaskEncoded`, indexed 0..n-1, with that task's plain labels (class
    ids or multi-hot rows): what :func:`tuneforge.core.evaluate.inference.predict_probabilities` evaluates."""

    def __init__(self, encoded: MultiTaskEncoded, task: int) -> None:
        self.encoded, self.task, self.pad_token_id = encoded, task, encoded.pad_token_id
        self.part = encoded.parts[task]
        self.offset = encoded.offsets[task]

    def __len__(self) -> int:
        return len(self.part)

    @property
    def lengths(self) -> list[int]:
        return self.part.lengths

    @property
    def labels(self) -> list:
        return self.part.labels

    def global_indices(self, local: list[int]) -> list[int]:
        return [self.offset + i for i in local]

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = collate(self.part, indices, self.pad_token_id)
        batch["task_index"] = torch.full((len(indices),), self.task, dtype=torch.long)
        return batch


# ----------------------------------------------------------------------------- batches across tasks


def task_batch_counts(sizes: list[int], batch_size: int) -> list[int]:
    return [math.ceil(size / batch_size) for size in sizes]


def temperature_probabilities(sizes: list[int], temperature: float) -> np.ndarray:
    """p_i = n_i^(1/T) / sum_j n_j^(1/T)."""
    weights = np.asarray(sizes, dtype=np.float64) ** (1.0 / temperature)
    return weights / weights.sum()


def temperature_quotas(sizes: list[int], total: int, temperature: float) -> list[int]:
    """Batches per task in an epoch of ``total`` batches: ``total * p_i`` rounded by largest remainder (so they
    sum to ``total``), at least one per task with examples."""
    shares = temperature_probabilities(sizes, temperature) * total
    quotas = np.floor(shares).astype(int)
    for index in np.argsort(-(shares - quotas), kind="stable")[:total - int(quotas.sum())]:
        quotas[index] += 1
    return [max(int(q), 1 if size else 0) for q, size in zip(quotas, sizes)]


def epoch_batches(encoded: MultiTaskEncoded, batch_size: int, generator: random.Random, group_by_length: bool,
                  sampling: str, temperature: float) -> list[list[int]]:
    """One epoch's batches (global example indices), each from one task, in the order ``sampling`` sets.

    ``proportional`` and ``round_robin``: every example exactly once. ``temperature``: the same number of batches
    as proportional, task i's share p_i ~ n_i^(1/T); a task drawn more often than its size allows starts another
    shuffled pass over its examples, one drawn less sees part of them. All draws come from ``generator`` (a
    resumed run replays them)."""

    def one_pass(task: int) -> list[list[int]]:
        part, offset = encoded.parts[task], encoded.offsets[task]
        local = (length_grouped_batches(part.lengths, batch_size, generator) if group_by_length
                 else shuffled_batches(len(part), batch_size, generator))
        return [[offset + i for i in batch] for batch in local]

    tasks = list(range(len(encoded.parts)))
    if sampling == "temperature":
        sizes = [len(part) for part in encoded.parts]
        quotas = temperature_quotas(sizes, sum(task_batch_counts(sizes, batch_size)), temperature)
        batches: list[list[int]] = []
        for task, quota in zip(tasks, quotas):
            drawn: list[list[int]] = []
            while len(drawn) < quota:
                drawn += one_pass(task)
            batches += drawn[:quota]
        generator.shuffle(batches)
        return batches
    per_task = [one_pass(task) for task in tasks]
    if sampling == "round_robin":
        order: list[list[int]] = []
        for turn in range(max((len(batches) for batches in per_task), default=0)):
            order += [batches[turn] for batches in per_task if turn < len(batches)]
        return order
    batches = [batch for task_batches in per_task for batch in task_batches]  # proportional
    generator.shuffle(batches)
    return batches
