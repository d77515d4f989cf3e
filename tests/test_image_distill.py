"""Distillation for image models (issue 12): a tiny random ResNet teacher, trained on the digits ImageFolder,
teaches a tiny random MobileNetV2 student (another family, built from a config). The loss of an image batch is
the formula; without augmentation the teacher's logits are computed once per run; with augmentation the teacher
runs on every augmented batch, seeing the same (mixed) images as the student; the student learns."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from test_distill import _softmax
from test_image_classification import IMAGE_SIZE, digits, image_recipe, make_tiny_image_model  # noqa: F401 (fixture)
from tuneforge.core.engine import distill, distill_image

DIGIT_NAMES = [str(digit) for digit in range(10)]


def processor(size: int = IMAGE_SIZE):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3)


def make_tiny_mobilenet(folder: Path) -> Path:
    """A random tiny MobileNetV2 (a quarter of its channels) with the digits tests' 16x16 image processor."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    torch.manual_seed(0)
    MobileNetV2ForImageClassification(MobileNetV2Config(image_size=IMAGE_SIZE, depth_multiplier=0.25, min_depth=4,
                                                        finegrained_output=False, num_labels=2)).save_pretrained(folder)
    processor().save_pretrained(folder)
    return folder


def student_recipe(folder: Path, student: Path, digits: dict[str, Path], teacher: Path, extra: str = "",
                   epochs: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return image_recipe(folder, student, digits, epochs=epochs, extra=f"""distill:
  teacher: {teacher}
  alpha: 0.5
  temperature: 2.0
{extra}""")


@pytest.fixture(scope="module")
def teacher_run(digits, tmp_path_factory) -> Path:  # noqa: F811 (the digits fixture)
    """A tiny ResNet trained on the digits (a teacher worth distilling from)."""
    folder = tmp_path_factory.mktemp("teacher")
    model = make_tiny_image_model(folder / "resnet", "resnet")
    run = folder / "run"
    code, _, err = run_cli("train", str(image_recipe(folder, model, digits)), "--output", str(run),
                           "--set", "train.num_threads=1")
    assert code == 0, err
    return run


def test_kd_loss_of_an_image_batch_is_the_formula_with_teacher_columns_matched_by_name():
    from transformers import ResNetConfig, ResNetForImageClassification

    from tuneforge.core.tasks.image import ImagePreprocessor
    from tuneforge.core.engine.distill import Distiller

    torch.manual_seed(1)
    teacher_names = DIGIT_NAMES[::-1]  # the teacher's outputs in another order than the student's labels
    model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                      num_labels=10)).eval()
    teacher = distill_image.ImageTeacher(model, ImagePreprocessor(processor(), 10), teacher_names)
    pixels = torch.randn(6, 3, IMAGE_SIZE, IMAGE_SIZE)
    student = torch.randn(6, 10) * 3
    one_hot = torch.nn.functional.one_hot(torch.tensor([0, 3, 3, 7, 9, 1]), 10).float()
    soft_labels = 0.7 * one_hot + 0.3 * one_hot[[1, 2, 3, 4, 5, 0]]  # MixUp's targets: the CE term takes them
    hard = torch.nn.functional.cross_entropy(student, soft_labels)
    alpha, temperature = 0.6, 3.0

    with torch.no_grad():
        teacher_logits = model(pixel_values=pixels).logits.numpy()[:, ::-1]  # column j = label str(j)
    s, y = student.numpy().astype(np.float64), soft_labels.numpy().astype(np.float64)
    cross_entropy = float(np.mean(-np.sum(y * np.log(_softmax(s)), axis=1)))
    p_teacher, p_student = _softmax(teacher_logits.astype(np.float64) / temperature), _softmax(s / temperature)
    kl = float(np.mean(np.sum(p_teacher * (np.log(p_teacher) - np.log(p_student)), axis=1)))
    expected = (1 - alpha) * cross_entropy + alpha * temperature ** 2 * kl

    per_batch = Distiller(None, alpha, temperature, torch.device("cpu"),
                          distill_image.BatchTeacher(teacher, DIGIT_NAMES, torch.device("cpu")))
    assert float(per_batch.loss(student, hard, list(range(6)), pixels)) == pytest.approx(expected, rel=1e-5)
    # the cached path: the same logits computed once for the split, rows picked by train-split index
    table = np.zeros((10, 10), dtype=np.float32)
    table[[4, 0, 8, 2, 6, 9]] = teacher_logits
    cached = Distiller(table, alpha, temperature, torch.device("cpu"))
    assert float(cached.loss(student, hard, [4, 0, 8, 2, 6, 9])) == pytest.approx(expected, rel=1e-5)


def test_teacher_view_of_an_augmented_batch_uses_the_same_crops_flips_and_mixing(digits):  # noqa: F811
    from tuneforge.base.recipe import ImageConfig, MixConfig
    from tuneforge.core.data.images import ImageSplit
    from tuneforge.core.tasks.image import EncodedImages, ImagePreprocessor
    from tuneforge.core.tasks.image import TEACHER_PIXELS

    paths = sorted(digits["test"].rglob("*.png"))[:32]
    split = ImageSplit(name="train", source=digits["test"], paths=paths, labels=[int(p.parent.name) for p in paths],
                       source_rows=list(range(1, 33)))
    augment = ImageConfig(random_resized_crop=(0.6, 1.0), horizontal_flip=True, mixup=MixConfig(alpha=0.4),
                          cutmix=MixConfig(alpha=1.0))
    student = ImagePreprocessor(processor(), 10)
    assert distill_image.same_pixels(student, ImagePreprocessor(processor(), 10))
    assert not distill_image.same_pixels(student, ImagePreprocessor(processor(24), 10))

    def batches(teacher_size: int) -> list[dict[str, torch.Tensor]]:
        encoded = EncodedImages(split, student, augment, seed=5)
        encoded.teacher_preprocessor = ImagePreprocessor(processor(teacher_size), 10)  # a processor of its own
        return [encoded.collate(list(range(start, start + 8))) for start in (0, 8, 16, 24, 0, 8)]

    same_size, larger = batches(IMAGE_SIZE), batches(24)
    for batch, other in zip(same_size, larger):
        # a teacher processor with the student's settings reproduces the student's batch exactly: same crops,
        # flips, MixUp lambda and pairs, CutMix box
        torch.testing.assert_close(batch[TEACHER_PIXELS], batch["pixel_values"], atol=1e-6, rtol=0)
        assert other[TEACHER_PIXELS].shape == (8, 3, 24, 24)
        assert torch.equal(other["pixel_values"], batch["pixel_values"])  # the student's batch does not change
    assert any(batch["labels"].dim() == 2 for batch in same_size)  # some batches were mixed


def test_distilled_mobilenet_student_learns_and_the_teacher_runs_once(digits, teacher_run, tmp_path,  # noqa: F811
                                                                      monkeypatch):
    calls, per_batch_calls = [], []
    original = distill.teacher_logits
    monkeypatch.setattr(distill, "teacher_logits", lambda *a, **k: calls.append(a[1].name) or original(*a, **k))
    monkeypatch.setattr(distill_image.BatchTeacher, "__call__", lambda self, pixels: per_batch_calls.append(1))
    student = make_tiny_mobilenet(tmp_path / "mobilenet")
    run = tmp_path / "student"
    recipe = student_recipe(tmp_path / "recipe", student, digits, teacher_run)
    code, _, err = run_cli("train", str(recipe), "--output", str(run), "--set", "train.num_threads=1")
    assert code == 0, err
    assert sorted(calls) == ["train", "validation"] and not per_batch_calls  # once per split, not per epoch
    record = json.loads((run / "distill.json").read_text())
    assert record["teacher_logits"] == "cached once" and record["teacher_validation_accuracy"] > 0.8
    assert json.loads((run / "model" / "config.json").read_text())["model_type"] == "mobilenet_v2"
    accuracy = json.loads((run / "eval" / "test" / "metrics.json").read_text())["accuracy"]
    assert accuracy > 0.5, accuracy  # chance is 0.1


def test_augmented_student_runs_the_teacher_on_every_batch(digits, teacher_run, tmp_path, monkeypatch):  # noqa: F811
    calls, seen = [], []
    original_logits, original_call = distill.teacher_logits, distill_image.BatchTeacher.__call__
    monkeypatch.setattr(distill, "teacher_logits", lambda *a, **k: calls.append(a[1].name) or original_logits(*a, **k))

    def counting_call(self, pixels):
        seen.append(pixels.shape[0])
        return original_call(self, pixels)

    monkeypatch.setattr(distill_image.BatchTeacher, "__call__", counting_call)
    student = make_tiny_mobilenet(tmp_path / "mobilenet")
    run = tmp_path / "student"
    recipe = student_recipe(tmp_path / "recipe", student, digits, teacher_run, epochs=1,
                            extra="image:\n  horizontal_flip: true\n  cutmix: {alpha: 1.0, probability: 0.5}")
    code, _, err = run_cli("train", str(recipe), "--output", str(run), "--set", "train.num_threads=1")
    assert code == 0, err
    # the train split's logits are not computed up front: its images change every epoch (the validation split's
    # are, unless the previous test's run left them in the cache)
    assert "train" not in calls
    train_examples = sum(json.loads((run / "run.json").read_text())["data"]["label_counts"]["train"].values())
    assert len(seen) == math.ceil(train_examples / 32) and sum(seen) == train_examples  # every step, every image
    assert json.loads((run / "distill.json").read_text())["teacher_logits"].startswith("per_batch")
    assert "teacher runs on every augmented batch" in err


def test_image_distillation_refusals(digits, teacher_run, tmp_path, tiny_model):  # noqa: F811
    student = make_tiny_mobilenet(tmp_path / "mobilenet")
    recipe = student_recipe(tmp_path / "recipe", student, digits, teacher_run)
    code, _, err = run_cli("validate", str(recipe), "--set", "distill.student_layers=every_other")
    assert code == 1 and "convolutional image model" in err and "smaller image model" in err
    # a ViT student's encoder layers can be dropped as a text encoder's (DistilBERT-style)
    vit = make_tiny_image_model(tmp_path / "vit", "vit")
    code, _, err = run_cli("validate", str(student_recipe(tmp_path / "vit-recipe", vit, digits, teacher_run)),
                           "--set", "distill.student_layers=every_other")
    assert code == 0, err
    # a text classifier with the same label names cannot teach an image student
    from transformers import AutoConfig

    text_teacher = tmp_path / "text-teacher"
    AutoConfig.from_pretrained(tiny_model, num_labels=10, id2label=dict(enumerate(DIGIT_NAMES))).save_pretrained(
        text_teacher)
    code, _, err = run_cli("validate", str(recipe), "--set", f"distill.teacher={text_teacher}")
    assert code == 1 and "is a text classifier" in err and "image-classification" in err
