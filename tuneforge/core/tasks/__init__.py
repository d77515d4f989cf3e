"""Task types behind one interface (:class:`~tuneforge.core.tasks.base.Task`): what differs between
``task: classification``, ``multilabel``, ``image-classification``, ``multitask``, ``sft``, ``causal-lm`` and
``masked-lm``.

The training loop (:mod:`tuneforge.core.engine.loop`) and the commands stay one readable script; at a few marked
points they ask the recipe's Task how to read the data, load the model, turn a split into batches, compute the
loss and the validation metrics, save and read back the model, and what to do once training is over (evaluate
the test split; multilabel also tunes its decision thresholds; sft also generates). One module per task;
adding a task = one module with a Task subclass, listed in ``TASKS`` below (and its name in the recipe schema).
"""

from __future__ import annotations

from tuneforge.core.tasks.base import ModelSelection, Task
from tuneforge.core.tasks.classification import ClassificationTask
from tuneforge.core.tasks.generative import (CausalLanguageModelTask, LanguageModelTask, MaskedLanguageModelTask,
                                             SupervisedFineTuningTask)
from tuneforge.core.tasks.image import ImageClassificationTask
from tuneforge.core.tasks.multilabel import MultiLabelTask
from tuneforge.core.tasks.multitask import MultiTaskTask

# The recipe's `task:` value -> the class that implements it.
TASKS: dict[str, type[Task]] = {task.name: task for task in (
    ClassificationTask, MultiLabelTask, ImageClassificationTask, MultiTaskTask, SupervisedFineTuningTask,
    CausalLanguageModelTask, MaskedLanguageModelTask)}


def task_for(name: str) -> Task:
    """A fresh Task object for a recipe's ``task:`` value (the recipe schema has already checked the name)."""
    return TASKS[name]()


__all__ = ["LanguageModelTask", "ModelSelection", "TASKS", "Task", "task_for"]
