"""``task: image-classification``: any transformers ``AutoModelForImageClassification`` (ResNet, MobileNetV2,
ViT, ConvNeXt, ...) from a local folder or hub id, with its head replaced for the run's labels; the model's own
image processor resizes and normalises (PIL/numpy: no torchvision needed).

The train split is augmented per batch (``image:`` section: random resized crop, horizontal flip, MixUp,
CutMix); validation and test never are. Methods: ``full``, ``freeze``, ``gradual``, ``lora``, ``dora`` and
``ia3`` (vision transformers); the others are refused with the reason before any weights load. Distillation from
an image teacher: :mod:`tuneforge.core.engine.distill_image`.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from tuneforge.base.recipe import ImageConfig, Recipe
from tuneforge.base.errors import UserError
from tuneforge.core.tasks.classification import ClassificationTask
from tuneforge.core.tasks.mixing import BatchMixer, horizontal_flip, random_resized_crop
from tuneforge.core.data.images import IMAGE_EXTENSIONS, ImageSplit, bad_images, list_image_table, load_image_data, open_rgb, read_image_split
from tuneforge.base.models import resolve_model
from tuneforge.base.quiet import quiet_transformers
from tuneforge.core.tasks.classification import DROPOUT_KEYS
from tuneforge.core.evaluate import write_evaluation
from tuneforge.core.evaluate.calibration import read_temperature
from tuneforge.core.evaluate.inference import predict_probabilities
from tuneforge.base.tables import write_table
from tuneforge.core.evaluate.summary import print_summary
from tuneforge.core.methods import method_spec
from tuneforge.core.recipe import load_run_recipe
from tuneforge.base.runfolder import refuse_pickle_weights

# The batch key of the distillation teacher's view of an augmented image batch (the loop pops it).
TEACHER_PIXELS = "teacher_pixel_values"

# PEFT methods need the layers to adapt and the head to train named for image models (methods/peft_method.py):
# done for LoRA and DoRA (any image model) and IA3 (vision transformers); the others are refused with a reason.
IMAGE_METHODS = ("full", "freeze", "gradual", "lora", "dora", "ia3")
# Why each other method is refused for image models (said to the user).
IMAGE_METHOD_REFUSALS = {
    "prefix": "its key/value prefixes are hooked into text models' self-attention (and initialised from their "
              "vocabulary tokens by default); image models are not wired",
    "prompt": "it prepends learned virtual tokens to the input token sequence; an image classifier reads pixels, "
              "there is no token sequence to prepend to",
    "ptuning": "it prepends learned virtual tokens to the input token sequence; an image classifier reads pixels, "
               "there is no token sequence to prepend to",
    "adalora": "not wired for image models yet (its per-step rank budget and the image targets/head of "
               "methods/peft_method.py are not connected); LoRA and DoRA are",
    "adapter": "its bottleneck layers are placed by the text-encoder layer layouts it knows; image models' are "
               "not among them",
}


def is_vision_transformer_config(model_config: Any) -> bool:
    """Whether an image model's config describes attention layers (ViT, DeiT, BEiT, ...), not a conv net."""
    return getattr(model_config, "num_attention_heads", None) is not None


def is_image_model_config(model_config: Any) -> bool:
    from transformers import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    return type(model_config) in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING


def model_class_for(model_dir: Path):
    """The Auto class that loads the saved model in ``model_dir``: image or sequence classification."""
    from transformers import AutoConfig, AutoModelForImageClassification, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    return AutoModelForImageClassification if is_image_model_config(config) else AutoModelForSequenceClassification


class ImagePreprocessor:
    """The model's image processor, shaped for the loop like a tokenizer: ``pad_token_id`` (unused: images
    are never padded) and ``save_pretrained`` (written beside the model, so the run folder is self-contained)."""

    pad_token_id = 0

    def __init__(self, processor, num_labels: int) -> None:
        self.processor = processor
        self.num_labels = num_labels

    def pixels(self, images: list) -> torch.Tensor:
        return self.processor(images, return_tensors="pt")["pixel_values"]

    def save_pretrained(self, folder: Path) -> None:
        self.processor.save_pretrained(folder)


def load_image_processor(source: str | Path):
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(f"{source}: no image processor found (preprocessor_config.json); save the model's "
                        f"processor beside it with processor.save_pretrained(folder): {str(exc).splitlines()[0]}") from None


# Processed images of a split are kept in memory (decoded and processed once, not every epoch) while they fit in
# this many bytes; random crops and flips are drawn anew every epoch, so such splits are processed per batch.
PIXEL_CACHE_BYTES = 1 << 30


def augments(config: ImageConfig | None) -> bool:
    """Whether ``config`` changes the train images from epoch to epoch (crop, flip, MixUp or CutMix)."""
    return config is not None and (config.random_resized_crop is not None or config.horizontal_flip
                                   or config.mixup is not None or config.cutmix is not None)


class EncodedImages:
    """A split as the loop's batches: images are decoded, augmented (train only) and processed per batch.
    ``lengths`` are all 1, so length-grouped batching is plain shuffling."""

    def __init__(self, split, preprocessor: ImagePreprocessor, augment: ImageConfig | None, seed: int) -> None:
        self.paths = list(split.paths)
        self.labels = list(split.labels)
        self.preprocessor = preprocessor
        self.augment = augment
        self.rng = random.Random(seed)
        self.mixer = (BatchMixer(augment.mixup, augment.cutmix, preprocessor.num_labels, seed)
                      if augment is not None else None)
        self.deterministic = augment is None or (augment.random_resized_crop is None and not augment.horizontal_flip)
        self.cache: dict[int, torch.Tensor] | None = {} if self.deterministic else None
        # Distillation on augmented batches (tuneforge.core.engine.distill_image sets these): the batch also carries the
        # teacher's view of the same augmented images, under TEACHER_PIXELS: the student's own pixels when both
        # models' processors agree, else the images through the teacher's processor, mixed with the same draws.
        self.teacher_preprocessor: ImagePreprocessor | None = None
        self.teacher_shares_pixels = False

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def lengths(self) -> list[int]:
        return [1] * len(self.paths)

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """``pixel_values`` and ``labels`` (class ids, or class probabilities after MixUp/CutMix); with a
        distillation teacher attached, also its view of the batch (``TEACHER_PIXELS``)."""

        images = None
        if self.cache is not None and all(i in self.cache for i in indices):
            pixels = torch.stack([self.cache[i] for i in indices])
        else:
            images = [open_rgb(self.paths[i]) for i in indices]
            if self.augment is not None and self.augment.random_resized_crop is not None:
                images = [random_resized_crop(image, self.augment.random_resized_crop, self.rng) for image in images]
            if self.augment is not None and self.augment.horizontal_flip:
                images = [horizontal_flip(image, self.rng) for image in images]
            pixels = self.preprocessor.pixels(images)
            if self.cache is not None:
                if pixels[0].numel() * pixels.element_size() * len(self) > PIXEL_CACHE_BYTES:
                    self.cache = None  # too large to keep: process every batch
                else:
                    self.cache.update(zip(indices, pixels))
        teacher_pixels = None
        if self.teacher_preprocessor is not None:
            if images is None:  # served from the pixel cache: no crop or flip, so the plain images are the ones
                images = [open_rgb(self.paths[i]) for i in indices]
            teacher_pixels = self.teacher_preprocessor.pixels(images)
        labels = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        if self.mixer is not None:
            pixels, labels, teacher_pixels = self.mixer.mix(pixels, labels, teacher_pixels)
        batch = {"pixel_values": pixels, "labels": labels}
        if self.teacher_shares_pixels:
            batch[TEACHER_PIXELS] = pixels
        elif teacher_pixels is not None:
            batch[TEACHER_PIXELS] = teacher_pixels
        return batch


class ImageClassificationTask(ClassificationTask):
    name = "image-classification"
    export_formats = ()
    inference_backends = ("torch",)  # no ONNX export of image runs yet
    supports_search = False
    supports_activation_cache = False
    supports_continual = False  # continual fine-tuning reads text rows (replay, forgetting)

    def load_data(self, recipe: Recipe):
        return load_image_data(recipe.data, recipe.train.seed)

    def check_model_config(self, recipe: Recipe, model_config: Any) -> None:
        if not is_image_model_config(model_config):
            raise UserError(f"model {recipe.model} ({model_config.model_type}) is not an image-classification model; "
                            "task image-classification takes any AutoModelForImageClassification (resnet, "
                            "mobilenet_v2, vit, convnext, ...) as a local folder or hub id")
        method = recipe.method.name
        if method not in IMAGE_METHODS:
            why = IMAGE_METHOD_REFUSALS.get(method, "not wired for image models")
            raise UserError(f"method.name {method}: not supported yet for task image-classification ({why}); "
                            f"use one of {', '.join(IMAGE_METHODS)}")
        if method == "ia3" and not is_vision_transformer_config(model_config):
            raise UserError(f"method.name ia3: {recipe.model} ({model_config.model_type}) is a convolutional model; "
                            "IA3 rescales attention keys/values and the feed-forward activations of transformer "
                            "layers, which a conv net does not have; use lora or dora (they adapt its Conv2d "
                            "layers), freeze or full")

    def load_model(self, recipe: Recipe, label_names: list[str]):
        from transformers import AutoConfig, AutoModelForImageClassification


        source = resolve_model(recipe.model)
        config = AutoConfig.from_pretrained(source, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
                                            label2id={name: i for i, name in enumerate(label_names)})
        if recipe.train.dropout is not None:
            for key in DROPOUT_KEYS:
                if isinstance(getattr(config, key, None), float):
                    setattr(config, key, recipe.train.dropout)
        with quiet_transformers():  # the replaced head is reported as "mismatched": expected
            model = AutoModelForImageClassification.from_pretrained(source, config=config,
                                                                    ignore_mismatched_sizes=True)
        return ImagePreprocessor(load_image_processor(source), len(label_names)), model

    def encode(self, preprocessor, split, recipe: Recipe, training: bool):
        return EncodedImages(split, preprocessor, recipe.image if training else None, recipe.train.seed)

    def encode_for_inference(self, recipe: Recipe, preprocessor, split):
        """Images as the saved model reads them after training (no augmentation): the inherited
        ``after_training`` calibrates on validation and evaluates the test split with them."""
        return EncodedImages(split, preprocessor, None, recipe.train.seed)

    # --------------------------------------------------------------------------- predict and eval of a run

    def predict_command(self, run_dir: str, text: str | None, text_pair: str | None, input_file: str | None,
                        output_file: str | None, top: int) -> int:
        """``tuneforge predict RUN --input FOLDER|IMAGE|FILE --output FILE``: path, label, confidence per image."""

        if text is not None or input_file is None:
            raise UserError("predict: this run classifies images; give --input FOLDER (or one image, or a file with "
                            "an image-path column) and --output FILE")
        predictor = ImagePredictor(run_dir)
        source = Path(input_file)
        if source.is_dir():
            paths = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif source.suffix.lower() in IMAGE_EXTENSIONS:
            paths = [source]
        else:
            paths = list_image_table(source, predictor.recipe.data, with_labels=False)[0]
        if not paths:
            raise UserError(f"{source}: no images found ({', '.join(IMAGE_EXTENSIONS)})")
        bad = bad_images(paths)
        if bad:
            listed = "; ".join(f"{p} ({why})" for p, why in bad[:10]) + (f"; and {len(bad) - 10} more"
                                                                          if len(bad) > 10 else "")
            if predictor.recipe.data.on_bad_image == "error":
                raise UserError(f"{source}: {len(bad)} image(s) cannot be read: {listed}. Fix or remove them (the "
                                "run's data.on_bad_image is error)")
            print(f"skipped {len(bad)} unreadable image(s): {listed}")
            unreadable = {p for p, _ in bad}
            paths = [p for p in paths if p not in unreadable]
        probabilities = predictor.probabilities(paths)
        names = predictor.label_names
        result = pd.DataFrame({"path": [str(p) for p in paths],
                               "predicted_label": [names[i] for i in probabilities.argmax(axis=1)],
                               "confidence": np.round(probabilities.max(axis=1), 6)})
        write_table(result, output_file)
        counts = result["predicted_label"].value_counts()
        print(f"wrote {len(result)} predictions to {output_file}: " + ", ".join(f"{k} {v}" for k, v in counts.head(5).items()))
        return 0

    def eval_command(self, run_dir: str, data_file: str) -> int:
        """``tuneforge eval RUN --data FOLDER|FILE``: an ImageFolder or a file with image-path and label columns."""

        predictor = ImagePredictor(run_dir)
        path = Path(data_file)
        folder = Path(run_dir) / "eval" / path.stem
        if folder.exists() and any(folder.iterdir()):
            raise UserError(f"{folder}: an evaluation named '{path.stem}' already exists; it is never overwritten: "
                            "rename or remove that folder first")
        split, _, notes = read_image_split(path, predictor.recipe.data, "eval", predictor.label_names)
        metrics = write_evaluation(folder, predictor.label_names, np.array(split.labels),
                                   predictor.probabilities(split.paths), split.texts, None, split.source_rows)
        for note in notes:
            print(f"note: {note}")
        print_summary(folder, {path.stem: metrics}, 0.0)
        print(f"  wrote {folder}/metrics.json, predictions.csv, errors.csv, confusion_matrix.png")
        return 0


class ImagePredictor:
    """An image run's model and processor; probabilities are softmaxes, columns in ``label_names`` order."""

    def __init__(self, run_dir: str | Path, batch_size: int = 64) -> None:
        import json

        import os


        run_dir = Path(run_dir)
        self.recipe = load_run_recipe(run_dir)
        if not (run_dir / "model").is_dir():
            raise UserError(f"{run_dir}: has no trained model (model/ is missing; did the run finish? see run.json)")
        for folder in (run_dir / "model", run_dir / "adapter"):  # pickled weights can run code when loaded
            refuse_pickle_weights(folder, allow_pickle=os.environ.get("TUNEFORGE_ALLOW_PICKLE") == "1")
        self.label_names: list[str] = json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))
        self.preprocessor = ImagePreprocessor(load_image_processor(run_dir / "model"), len(self.label_names))
        # Through the method, as text runs load: a plain model in model/, or base/ + adapter/ (merge: false).
        self.model: nn.Module = method_spec(self.recipe.method.name).load(run_dir, self.recipe.method).eval()
        self.batch_size = batch_size
        # calibration.json (train.calibrate): confidences are softmax(logits / T); a run without one: T = 1
        self.temperature = read_temperature(run_dir) or 1.0

    def probabilities(self, paths: list[Path]) -> np.ndarray:

        split = ImageSplit(name="predict", source=Path("."), paths=list(paths), labels=[0] * len(paths),
                           source_rows=list(range(1, len(paths) + 1)))
        encoded = EncodedImages(split, self.preprocessor, None, 0)
        return predict_probabilities(self.model, encoded, self.batch_size, 0, torch.device("cpu"),
                                     temperature=self.temperature)[0]
