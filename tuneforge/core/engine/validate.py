"""Full validation of a recipe before anything slow: recipe keys, data files, columns, labels, splits,
model resolution (config only, no weights) and method/model fit."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tuneforge.base.recipe import Recipe
from tuneforge.core.recipe import load_recipe
from tuneforge.base.errors import UserError
from tuneforge.base.models import load_model_config
from tuneforge.core.tasks import task_for
from tuneforge.core.engine.runtime import resolve_precision
from tuneforge.core.engine.distill import check_teacher


@dataclass
class ValidatedJob:
    """A recipe whose data and model have been checked, ready to train."""

    recipe: Recipe
    data: Any  # the task's data: ClassificationData, GenerativeData, ...
    model_config: Any


def validate_job(recipe_path: str | Path, overrides: list[str] | None = None) -> ValidatedJob:
    """Run every check that needs no model weights; raise UserError on the first failing stage."""
    recipe = load_recipe(recipe_path, overrides)
    return check_job(recipe)


def check_job(recipe: Recipe) -> ValidatedJob:
    """:func:`validate_job` for a recipe already loaded (``search`` trials, ``compare`` runs)."""
    resolve_precision(recipe.train.precision, torch.cuda.is_available())
    task = task_for(recipe.task)
    task.check_recipe(recipe)  # [task] the methods and sections it supports, declared on the task
    data = task.load_data(recipe)  # [task] texts, multi-label rows, images or conversations, all checked
    model_config = load_model_config(recipe.model)
    task.check_model_config(recipe, model_config)
    if recipe.distill is not None:  # the teacher's labels and the student's layers, without loading weights
        check_teacher(recipe, data, model_config)
    layers = getattr(model_config, "num_hidden_layers", None)
    top = getattr(recipe.method, "unfreeze_top_layers", None)
    if layers is not None and top is not None and top > layers:
        raise UserError(f"method.unfreeze_top_layers={top} but {recipe.model} has {layers} layers; "
                        f"use a value from 0 to {layers}")
    settings = recipe.train.class_weights
    if isinstance(settings, dict):
        unknown = sorted(set(settings) - set(data.label_names))
        if unknown:
            raise UserError(f"train.class_weights names label(s) {', '.join(map(repr, unknown))} that the train set "
                            f"does not have; labels are: {', '.join(data.label_names[:20])}")
    stopping = recipe.train.early_stopping
    if stopping and stopping.metric == "roc_auc" and len(data.validation) < 2:
        raise UserError("train.early_stopping.metric roc_auc needs a validation set with both classes")
    return ValidatedJob(recipe=recipe, data=data, model_config=model_config)
