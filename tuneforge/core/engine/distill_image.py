"""Knowledge distillation for ``task: image-classification`` (docs/distillation.md): the teacher is an image
classifier (a finished image run folder, or an ``AutoModelForImageClassification`` folder / hub id) with the
student's label names; the loss is :func:`tuneforge.core.engine.distill.distillation_loss`, as for text.

What this module owns: loading such a teacher with its own image processor (:func:`load_image_teacher`), its
logits for a whole un-augmented split (:func:`image_teacher_logits`, cached once per run by
:mod:`tuneforge.core.engine.distill` like the text path's) and, when the train split is augmented, the teacher run on
every augmented batch (:class:`BatchTeacher`). Why per batch then: random crops, flips, MixUp and CutMix give
the student different pixels every epoch; logits cached from the plain images would describe images the
student never sees. The teacher sees the same augmented (and mixed) batch through its own processor
(:class:`tuneforge.core.tasks.image.EncodedImages` builds that view; ``TEACHER_PIXELS`` in the batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tuneforge.base.recipe import DistillConfig
from tuneforge.base.models import load_model_config, resolve_model
from tuneforge.core.tasks.image import EncodedImages, ImagePredictor, ImagePreprocessor, is_image_model_config, load_image_processor
from tuneforge.base.runfolder import is_classifier_run_folder
from tuneforge.core.recipe import load_run_recipe


@dataclass
class ImageTeacher:
    """A loaded image teacher: model (eval mode), its image processor and its label names in output order."""

    model: nn.Module
    preprocessor: Any  # tuneforge.core.tasks.image.ImagePreprocessor
    label_names: list[str]


def is_image_teacher(config: DistillConfig) -> bool:
    """Whether ``distill.teacher`` is an image classifier (an image run folder or model), without loading weights."""

    path = Path(config.teacher).expanduser()
    if is_classifier_run_folder(path):
        return load_run_recipe(path).task == "image-classification"
    return is_image_model_config(load_model_config(config.teacher))


def load_image_teacher(config: DistillConfig) -> ImageTeacher:
    """Load the teacher: an image run (any method, through its predictor) or an image-classification model."""

    path = Path(config.teacher).expanduser()
    if is_classifier_run_folder(path):
        predictor = ImagePredictor(path)
        return ImageTeacher(predictor.model.eval(), predictor.preprocessor, predictor.label_names)
    from transformers import AutoModelForImageClassification

    source = resolve_model(config.teacher)
    model = AutoModelForImageClassification.from_pretrained(source).eval()
    names = [str(model.config.id2label[i]) for i in sorted(model.config.id2label, key=int)]
    return ImageTeacher(model, ImagePreprocessor(load_image_processor(source), len(names)), names)


def label_order(teacher_names: list[str], label_names: list[str]) -> list[int]:
    """Indices of the teacher's output columns in the student's label order (labels are matched by name)."""
    return [teacher_names.index(name) for name in label_names]


@torch.no_grad()
def image_teacher_logits(teacher: ImageTeacher, split, label_names: list[str], device: torch.device,
                         batch_size: int = 64) -> np.ndarray:
    """The teacher's logits for every image of ``split`` (not augmented), columns in ``label_names`` order."""
    encoded = EncodedImages(split, teacher.preprocessor, None, 0)
    model = teacher.model.to(device).eval()
    logits = np.zeros((len(split), len(teacher.label_names)), dtype=np.float32)
    for start in range(0, len(split), batch_size):
        indices = list(range(start, min(start + batch_size, len(split))))
        pixels = encoded.collate(indices)["pixel_values"].to(device)
        logits[indices] = model(pixel_values=pixels).logits.float().cpu().numpy()
    return logits[:, label_order(teacher.label_names, label_names)]


def same_pixels(student_preprocessor, teacher_preprocessor) -> bool:
    """Whether both image processors turn an image into the same pixel_values (same class and settings)."""
    first, second = student_preprocessor.processor, teacher_preprocessor.processor
    return type(first) is type(second) and first.to_dict() == second.to_dict()


class BatchTeacher:
    """The teacher run on each augmented train batch (no gradients, eval mode: its BatchNorm statistics stay)."""

    def __init__(self, teacher: ImageTeacher, label_names: list[str], device: torch.device) -> None:
        self.model = teacher.model.to(device).eval()
        self.order = torch.tensor(label_order(teacher.label_names, label_names), device=device)

    @torch.no_grad()
    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        """The teacher's logits of one batch (its own view of the images), columns in the student's label order."""
        return self.model(pixel_values=pixels).logits.float()[:, self.order]


def batch_teacher_for(config: DistillConfig, train_set, label_names: list[str], device: torch.device
                      ) -> tuple[BatchTeacher, bool]:
    """Load the teacher and have ``train_set`` (an augmented :class:`EncodedImages`) put the teacher's view of
    each batch into it. Returns the teacher and whether it reads the student's own pixels (same processor)."""
    teacher = load_image_teacher(config)
    shared = same_pixels(train_set.preprocessor, teacher.preprocessor)
    if shared:
        train_set.teacher_shares_pixels = True
    else:
        train_set.teacher_preprocessor = teacher.preprocessor
    return BatchTeacher(teacher, label_names, device), shared
