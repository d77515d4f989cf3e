"""Task types: what differs between ``task: classification``, ``multilabel`` and ``image-classification``.

The training loop (:mod:`tuneforge.core.engine.loop`) and the commands stay one readable script; at a few marked
points they ask the recipe's :class:`~tuneforge.core.tasks.base.Task` how to read the data, load the model, turn a
split into batches, compute the loss and the validation metrics, and what to do once training is over
(evaluate the test split; multilabel also tunes its decision thresholds). One module per task.
"""

from __future__ import annotations

from tuneforge.core.tasks.base import Task
from tuneforge.core.tasks.multilabel import MultiLabelTask
from tuneforge.core.tasks.multitask import MultiTaskTask
from tuneforge.core.tasks.image import ImageClassificationTask
from tuneforge.core.tasks.classification import ClassificationTask


def task_for(name: str) -> Task:
    """The Task object for a recipe's ``task:`` value."""
    if name == "multilabel":
        return MultiLabelTask()
    if name == "multitask":
        return MultiTaskTask()
    if name == "image-classification":
        return ImageClassificationTask()

    return ClassificationTask()


__all__ = ["Task", "task_for"]
