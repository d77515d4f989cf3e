"""Knowledge distillation (recipe key ``distill``): a student learns from the labels and from a teacher's logits.

    loss = (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))

(Hinton et al., 2015; the T^2 keeps the soft term's gradients on the scale of the hard one's as T grows.)

What this module owns: checking the teacher before anything slow (:func:`check_teacher`), shrinking the student
to a subset of its layers (:func:`shrink_student`, e.g. every other layer as DistilBERT did), computing the
teacher's logits for the train split once per run (kept on disk in the tuneforge cache, keyed by the teacher's
files and the texts, so the next run or search trial on the same data reuses them) and the loss
(:class:`Distiller`). The loop adds the soft term to its own cross-entropy; nothing else in it changes.
Image students (``task: image-classification``) learn from an image teacher through the same code: see
:mod:`tuneforge.core.engine.distill_image` for the teacher's images and for augmented train splits, where the
teacher runs on every augmented batch instead of once.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tuneforge.base.recipe import DistillConfig, Recipe
from tuneforge.core.data.batching import EncodedSplit, encode_split, iterate_batches, sorted_batches
from tuneforge.core.data.splits import ClassificationData
from tuneforge.core.data.splits import Split
from tuneforge.base.errors import UserError
from tuneforge.base.runfolder import is_classifier_run_folder
from tuneforge.base.models import load_model_config, resolve_model
from tuneforge.core.engine.distill_image import (BatchTeacher, ImageTeacher, batch_teacher_for, image_teacher_logits,
                                                is_image_teacher, load_image_teacher)
from tuneforge.core.anatomy import describe
from tuneforge.core.tasks.predictor import Predictor
from tuneforge.core.recipe import load_run_recipe
from tuneforge.base.paths import cache_root
from tuneforge.core.tasks.image import augments

# Tasks whose students can be distilled: softmax classifiers over texts or images.
DISTILL_TASKS = ("classification", "image-classification")
# Batch key of a teacher's own view of an augmented image batch (EncodedImages puts it there; the loop pops it).


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor,
                      alpha: float, temperature: float) -> torch.Tensor:
    """(1 - alpha) * hard_loss + alpha * T^2 * KL(softmax(t/T) || softmax(s/T)), the KL averaged over the batch."""
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=-1),
                    F.log_softmax(teacher_logits / temperature, dim=-1), log_target=True, reduction="batchmean")
    return (1 - alpha) * hard_loss + alpha * temperature ** 2 * soft


# ----------------------------------------------------------------------------- the teacher


def teacher_label_names(config: DistillConfig) -> list[str]:
    """The teacher's label names in its output order, read without loading weights."""
    path = Path(config.teacher).expanduser()
    if is_classifier_run_folder(path):
        if not (path / "model").is_dir():
            raise UserError(f"distill.teacher: {path} has no trained model (model/ is missing; did that run finish? "
                            "see its run.json)")
        return json.loads((path / "labels.json").read_text(encoding="utf-8"))
    if path.is_dir() and (path / "run.json").is_file():
        raise UserError(f"distill.teacher: {path} is an unfinished tuneforge run (no config.yaml/labels.json)")

    try:
        model_config = load_model_config(config.teacher)
    except UserError as exc:
        raise UserError(f"distill.teacher: {exc} (give a finished tuneforge run folder, or a classification "
                        "model's alias, folder or hub id)") from None
    id2label = getattr(model_config, "id2label", None) or {}
    names = [str(id2label[i]) for i in sorted(id2label, key=int)]
    if not names or all(name.startswith("LABEL_") for name in names):
        raise UserError(f"distill.teacher: '{config.teacher}' has no classification head with label names "
                        "(id2label); give a tuneforge run folder, or a model fine-tuned for these labels")
    return names


def check_teacher(recipe: Recipe, data: ClassificationData, student_config: Any) -> None:
    """Everything about ``distill`` that can be checked without weights: task, teacher labels, student layers."""
    config = recipe.distill
    if config is None:
        return
    if recipe.task not in DISTILL_TASKS:
        raise UserError(f"distill: task {recipe.task} is not supported yet (classification and "
                        "image-classification only)")
    names = teacher_label_names(config)

    images = recipe.task == "image-classification"
    if is_image_teacher(config) != images:
        raise UserError(f"distill.teacher: {config.teacher} is {'a text' if images else 'an image'} classifier and the "
                        f"student's task is {recipe.task}; distil from a teacher that reads the same inputs")
    if sorted(names) != sorted(data.label_names):
        missing = sorted(set(data.label_names) - set(names))
        extra = sorted(set(names) - set(data.label_names))
        raise UserError(f"distill.teacher: its labels differ from the data's (the data has {missing or 'none'} that the "
                        f"teacher lacks; the teacher has {extra or 'none'} that the data lacks); distil from a teacher "
                        "trained for the same labels")
    if config.student_layers is not None:
        layers = getattr(student_config, "num_hidden_layers", None)
        if layers is None and images:
            raise UserError(f"distill.student_layers: {recipe.model} ({student_config.model_type}) is a convolutional "
                            "image model: its stages differ in width, so layers cannot be dropped as an encoder's "
                            "can; choose a smaller image model as `model:` instead (e.g. a MobileNetV2 student of a "
                            "ResNet teacher) and remove the key")
        if layers is None:
            raise UserError(f"distill.student_layers: cannot tell how many layers {recipe.model} has; remove the key")
        keep = student_layer_indices(config.student_layers, layers)
        if max(keep) >= layers:
            raise UserError(f"distill.student_layers: {recipe.model} has layers 0..{layers - 1}; "
                            f"{max(keep)} does not exist")


def student_layer_indices(setting: str | list[int], num_layers: int) -> list[int]:
    """The layers a shrunk student keeps, bottom to top. ``every_other``: 0, 2, 4, ... (DistilBERT's choice)."""
    if setting == "every_other":
        return list(range(0, num_layers, 2))
    return sorted(setting)


def shrink_student(model: nn.Module, setting: str | list[int] | None) -> nn.Module:
    """Keep only some encoder layers of ``model`` (weights copied from those layers); the config follows so that
    the saved model loads back with its new depth."""
    if setting is None:
        return model

    anatomy = describe(model)
    stack_path = anatomy.layer_modules[0].rsplit(".", 1)[0]
    stack = model.get_submodule(stack_path)
    keep = student_layer_indices(setting, len(stack))
    model.get_submodule(stack_path.rsplit(".", 1)[0]).__setattr__(
        stack_path.rsplit(".", 1)[-1], nn.ModuleList([stack[i] for i in keep]))
    model.config.num_hidden_layers = len(keep)
    for new_index, layer in enumerate(model.get_submodule(stack_path)):
        attention = getattr(layer, "attention", None) or getattr(layer, "self_attn", None)
        for module in (layer, attention, getattr(attention, "self", None)):
            if module is not None and hasattr(module, "layer_idx"):
                module.layer_idx = new_index  # cache bookkeeping of decoder models
    return model


@dataclass
class Teacher:
    """A loaded teacher: model, tokenizer, label names (its output order) and the max_length it reads with."""

    model: nn.Module
    tokenizer: Any
    label_names: list[str]
    max_length: int


def load_teacher(config: DistillConfig, max_length: int) -> Teacher:
    """Load the teacher: a tuneforge run (any method, through its Predictor) or a classification model
    (an image teacher: :func:`tuneforge.core.engine.distill_image.load_image_teacher`)."""
    if is_image_teacher(config):
        return load_image_teacher(config)
    path = Path(config.teacher).expanduser()
    if is_classifier_run_folder(path):
        predictor = Predictor(path)
        return Teacher(predictor.model, predictor.tokenizer, predictor.label_names, predictor.recipe.data.max_length)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    source = resolve_model(config.teacher)
    model = AutoModelForSequenceClassification.from_pretrained(source).eval()
    names = [str(model.config.id2label[i]) for i in sorted(model.config.id2label, key=int)]
    return Teacher(model, AutoTokenizer.from_pretrained(source), names, max_length)


def _folder_fingerprint(folders: list[Path]) -> str:
    """Names, sizes and modification times of the weight folders: changes when the teacher is retrained."""
    digest = hashlib.sha256()
    for folder in folders:
        if folder.is_dir():
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    stat = file.stat()
                    digest.update(f"{file.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return digest.hexdigest()


@torch.no_grad()
def teacher_logits(teacher: Teacher | ImageTeacher, split: Split, label_names: list[str], device: torch.device,
                   batch_size: int = 64) -> np.ndarray:
    """The teacher's logits for every example of ``split``, columns in ``label_names`` order."""
    if isinstance(teacher, ImageTeacher):
        return image_teacher_logits(teacher, split, label_names, device, batch_size)
    encoded: EncodedSplit = encode_split(teacher.tokenizer, split, teacher.max_length)
    pad_id = teacher.tokenizer.pad_token_id if teacher.tokenizer.pad_token_id is not None else 0
    model = teacher.model.to(device).eval()
    logits = np.zeros((len(split), len(teacher.label_names)), dtype=np.float32)
    batches = sorted_batches(encoded.lengths, batch_size)
    for indices, batch in zip(batches, iterate_batches(encoded, batches, pad_id)):
        batch.pop("labels")
        logits[indices] = model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu().numpy()
    order = [teacher.label_names.index(name) for name in label_names]
    return logits[:, order]


def teacher_identity(config: DistillConfig, max_length: int) -> tuple[str, int]:
    """What identifies the teacher's logits without loading it: a fingerprint of its weight files (names, sizes,
    modification times; a hub id as is) and the max_length it reads texts with."""
    path = Path(config.teacher).expanduser()
    if is_classifier_run_folder(path):
        return _folder_fingerprint([path / "model", path / "adapter"]), load_run_recipe(path).data.max_length

    source = resolve_model(config.teacher)
    return (_folder_fingerprint([Path(source)]) if Path(source).is_dir() else source), max_length


def _cache_path(fingerprint: str, max_length: int, split: Split, label_names: list[str]) -> Path:
    digest = hashlib.sha256(f"{fingerprint}\0{max_length}\0{json.dumps(label_names)}\0".encode())
    for text in split.texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    for text in split.text_pairs or []:
        digest.update(b"\1" + text.encode("utf-8", "surrogatepass") + b"\0")
    for path in getattr(split, "paths", None) or []:  # images: a file rewritten in place changes the key too
        stat = Path(path).stat()
        digest.update(f"\2{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    return cache_root() / "teacher_logits" / f"{digest.hexdigest()[:32]}.npy"


def cached_teacher_logits(config: DistillConfig, split: Split, label_names: list[str], max_length: int,
                          device: torch.device, log=print) -> np.ndarray:
    """Teacher logits for ``split``: from the on-disk cache, else computed (one forward pass) and stored."""
    cache = _cache_path(*teacher_identity(config, max_length), split, label_names)
    if cache.is_file():
        try:
            values = np.load(cache, allow_pickle=False)
            if values.shape == (len(split), len(label_names)):
                log(f"distillation: teacher logits for {len(split)} {split.name} examples read from the cache")
                return values
        except (OSError, ValueError):
            pass  # unreadable: compute again
    teacher = load_teacher(config, max_length)
    values = teacher_logits(teacher, split, label_names, device)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_name(f".{cache.name}.{os.getpid()}.tmp.npy")
        np.save(temporary, values, allow_pickle=False)
        os.replace(temporary, cache)
    except OSError as exc:
        log(f"note: could not cache the teacher's logits ({exc}); they are computed again next run")
    return values


class Distiller:
    """Adds the teacher's soft targets to the loop's loss. The teacher's logits of the train split are computed
    once per run (``logits``); for an augmented image train split, where the student sees new pixels every
    epoch, the teacher runs on each augmented batch instead (``batch_teacher``)."""

    def __init__(self, logits: np.ndarray | None, alpha: float, temperature: float, device: torch.device,
                 batch_teacher: BatchTeacher | None = None) -> None:
        self.logits = torch.from_numpy(logits).to(device) if logits is not None else None
        self.batch_teacher = batch_teacher
        self.alpha = alpha
        self.temperature = temperature

    @classmethod
    def for_run(cls, recipe: Recipe, data: ClassificationData, run_dir: Path, device: torch.device,
                log=print, train_set: Any = None) -> "Distiller":
        """Teacher logits for the train split (and its validation accuracy, recorded in ``distill.json``); with an
        augmented image ``train_set``, the teacher attached to it to run per batch instead."""
        import time

        config = recipe.distill
        started = time.perf_counter()
        per_batch = recipe.task == "image-classification" and augments(recipe.image)
        train_logits, batch_teacher = None, None
        if per_batch:
            batch_teacher, shared = batch_teacher_for(config, train_set, data.label_names, device)
            log("distillation: the train images are augmented (random crop, flip, MixUp or CutMix), so the teacher "
                "runs on every augmented batch (logits cached from the plain images would not match what the "
                "student sees); it reads " + ("the student's pixels (same image processor)" if shared else
                                              "the same augmented images through its own image processor"))
        else:
            train_logits = cached_teacher_logits(config, data.train, data.label_names, recipe.data.max_length,
                                                 device, log)
        validation_logits = cached_teacher_logits(config, data.validation, data.label_names, recipe.data.max_length,
                                                  device, log)
        seconds = time.perf_counter() - started
        validation_accuracy = float((validation_logits.argmax(1) == np.asarray(data.validation.labels)).mean())
        train_accuracy = (float((train_logits.argmax(1) == np.asarray(data.train.labels)).mean())
                          if train_logits is not None else None)
        record = {"teacher": config.teacher, "alpha": config.alpha, "temperature": config.temperature,
                  "student_layers": config.student_layers,
                  "teacher_logits": "per_batch (augmented train images)" if per_batch else "cached once",
                  "teacher_train_accuracy": train_accuracy,
                  "teacher_validation_accuracy": validation_accuracy, "teacher_seconds": round(seconds, 2)}
        (run_dir / "distill.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
        ready = ("teacher ready" if per_batch else f"logits for {len(data.train)} train examples ready")
        log(f"distillation: teacher {config.teacher} (validation accuracy {validation_accuracy:.4f}); {ready} in "
            f"{seconds:.1f}s; alpha {config.alpha}, T {config.temperature}")
        return cls(train_logits, config.alpha, config.temperature, device, batch_teacher)

    def loss(self, student_logits: torch.Tensor, hard_loss: torch.Tensor, indices: list[int],
             teacher_inputs: torch.Tensor | None = None) -> torch.Tensor:
        """The distillation loss of a batch of train examples (``indices`` into the train split).
        ``teacher_inputs``: the teacher's view of an augmented image batch (``TEACHER_PIXELS``), which the
        teacher reads now; without it, the batch's rows of the logits computed once."""
        if teacher_inputs is not None:
            soft_targets = self.batch_teacher(teacher_inputs)
        elif self.logits is not None:
            soft_targets = self.logits[indices]
        else:  # a bug, not bad input: an augmented split must carry the teacher's view of each batch
            raise RuntimeError("distillation: the batch carries no teacher inputs and no logits were cached")
        return distillation_loss(student_logits, soft_targets, hard_loss, self.alpha, self.temperature)
