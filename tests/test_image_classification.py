"""task: image-classification on scikit-learn's digits (1,797 8x8 images) written as PNGs into an ImageFolder:
tiny random ResNet and ViT built from configs must learn; MixUp/CutMix targets; bad images; predict and eval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli

IMAGE_SIZE = 16


def write_digits(root: Path) -> dict[str, Path]:
    """train/ (900 images) and test/ (400) ImageFolders of the digits, label = the digit."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.images))
    folders = {"train": root / "train", "test": root / "test"}
    for position, index in enumerate(order[:1300]):
        folder = folders["train" if position < 900 else "test"] / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")
    return folders


def make_tiny_image_model(folder: Path, kind: str) -> Path:
    """A random tiny ResNet or ViT and a 16x16 image processor, saved as a model folder."""
    from transformers import ResNetConfig, ResNetForImageClassification, ViTConfig, ViTForImageClassification
    from transformers import ViTImageProcessor

    torch.manual_seed(0)
    if kind == "resnet":
        model = ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1],
                                                          num_labels=2))
    else:
        model = ViTForImageClassification(ViTConfig(image_size=IMAGE_SIZE, patch_size=4, hidden_size=32,
                                                    num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64, num_labels=2))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, Path]:
    return write_digits(tmp_path_factory.mktemp("digits"))


def image_recipe(folder: Path, model: Path, digits: dict[str, Path], extra: str = "", epochs: int = 6) -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""name: digits
model: {model}
task: image-classification
data:
  train: {digits['train']}
  test: {digits['test']}
method:
  name: full
train:
  epochs: {epochs}
  batch_size: 32
  learning_rate: 3.0e-3
  warmup_ratio: 0.0
  early_stopping: null
{extra}""", encoding="utf-8")
    return recipe


def test_mixup_and_cutmix_targets_sum_to_one_and_cutmix_box_matches_lambda():
    from tuneforge.core.tasks.mixing import cutmix, mixup

    generator = np.random.default_rng(0)
    pixels = torch.arange(4 * 3 * 10 * 10, dtype=torch.float32).reshape(4, 3, 10, 10)
    targets = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 3]), 5).float()
    permutation = torch.tensor([1, 2, 3, 0])
    mixed, mixed_targets = mixup(pixels, targets, 0.7, permutation)
    assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(4))
    assert torch.allclose(mixed_targets[0], torch.tensor([0.7, 0.3, 0, 0, 0]))
    assert torch.allclose(mixed[0], 0.7 * pixels[0] + 0.3 * pixels[1])
    for lam in (0.1, 0.5, 0.9):
        mixed, mixed_targets, (top, bottom, left, right), kept = cutmix(pixels, targets, lam, permutation, generator)
        assert torch.allclose(mixed_targets.sum(dim=1), torch.ones(4))
        pasted = (mixed[0] != pixels[0]).any(dim=0)  # pixels now from the partner image
        assert pasted.sum().item() == (bottom - top) * (right - left)
        assert kept == pytest.approx(1 - pasted.float().mean().item())
        assert mixed_targets[0, 0].item() == pytest.approx(kept) and mixed_targets[0, 1].item() == pytest.approx(1 - kept)
    # a box that is not clipped at the border covers (1 - lambda) of the area, up to the rounding of its sides
    unclipped = 0
    for seed in range(40):
        _, _, (top, bottom, left, right), kept = cutmix(torch.zeros(1, 1, 100, 100), targets[:1], 0.75,
                                                        torch.tensor([0]), np.random.default_rng(seed))
        if top > 0 and left > 0 and bottom < 100 and right < 100:
            unclipped += 1
            assert kept == pytest.approx(0.75, abs=0.01)
    assert unclipped > 5


def test_tiny_resnet_learns_digits_then_predicts_a_folder_and_evaluates(digits, tmp_path):
    model = make_tiny_image_model(tmp_path / "resnet", "resnet")
    run = tmp_path / "run"
    code, out, err = run_cli("train", str(image_recipe(tmp_path, model, digits)), "--output", str(run))
    assert code == 0, err
    metrics = json.loads((run / "eval/test/metrics.json").read_text())
    assert metrics["accuracy"] > 0.6, metrics["accuracy"]  # chance is 0.1
    assert (run / "eval/test/confusion_matrix.png").is_file()
    assert (run / "model/preprocessor_config.json").is_file()

    # predict on a folder of images, one of them corrupt: reported by path
    unlabelled = tmp_path / "new"
    unlabelled.mkdir()
    for path in sorted((digits["test"] / "3").glob("*.png"))[:5]:
        (unlabelled / path.name).write_bytes(path.read_bytes())
    (unlabelled / "broken.png").write_bytes(b"not a png")
    code, _, err = run_cli("predict", str(run), "--input", str(unlabelled), "--output", str(tmp_path / "p.csv"))
    assert code == 1 and "broken.png" in err
    (unlabelled / "broken.png").unlink()
    code, out, err = run_cli("predict", str(run), "--input", str(unlabelled), "--output", str(tmp_path / "p.csv"))
    assert code == 0, err
    import pandas as pd

    predicted = pd.read_csv(tmp_path / "p.csv")
    assert list(predicted.columns) == ["path", "predicted_label", "confidence"] and len(predicted) == 5

    (tmp_path / "heldout").symlink_to(digits["test"], target_is_directory=True)
    code, out, err = run_cli("eval", str(run), "--data", str(tmp_path / "heldout"))
    assert code == 0, err
    assert json.loads((run / "eval/heldout/metrics.json").read_text())["n_examples"] == 400


def test_tiny_vit_learns_digits(digits, tmp_path):
    model = make_tiny_image_model(tmp_path / "vit", "vit")
    run = tmp_path / "run"
    code, out, err = run_cli("train", str(image_recipe(tmp_path, model, digits, epochs=8)), "--output", str(run))
    assert code == 0, err
    accuracy = json.loads((run / "eval/test/metrics.json").read_text())["accuracy"]
    assert accuracy > 0.3, accuracy  # chance is 0.1


def test_augmentation_is_seeded_and_train_only(digits):
    """Crops and flips keep the image size and repeat with the seed; MixUp/CutMix batches carry class
    probabilities that sum to 1; the same split encoded for validation is never changed."""
    from tuneforge.base.recipe import ImageConfig, MixConfig
    from tuneforge.core.data.images import ImageSplit
    from tuneforge.core.tasks.image import EncodedImages, ImagePreprocessor
    from transformers import ViTImageProcessor

    paths = sorted(digits["test"].rglob("*.png"))[::20][:16]
    names = [str(n) for n in range(10)]
    split = ImageSplit(name="test", source=digits["test"], paths=paths, labels=[int(p.parent.name) for p in paths],
                       source_rows=list(range(1, 17)))
    preprocessor = ImagePreprocessor(ViTImageProcessor(size={"height": 16, "width": 16}), len(names))
    augment = ImageConfig(random_resized_crop=(0.5, 0.9), horizontal_flip=True,
                          mixup=MixConfig(alpha=0.4), cutmix=MixConfig(alpha=1.0))
    first = EncodedImages(split, preprocessor, augment, seed=3).collate(list(range(16)))
    again = EncodedImages(split, preprocessor, augment, seed=3).collate(list(range(16)))
    other = EncodedImages(split, preprocessor, augment, seed=4).collate(list(range(16)))
    assert torch.equal(first["pixel_values"], again["pixel_values"])
    assert not torch.equal(first["pixel_values"], other["pixel_values"])
    assert first["pixel_values"].shape == (16, 3, 16, 16)
    assert first["labels"].shape == (16, len(names)) and torch.allclose(first["labels"].sum(1), torch.ones(16))
    plain = EncodedImages(split, preprocessor, None, seed=3)
    assert torch.equal(plain.collate([0, 1])["pixel_values"], plain.collate([0, 1])["pixel_values"])
    assert plain.collate([0, 1])["labels"].tolist() == split.labels[:2]


def test_bad_images_are_listed_by_path_or_skipped(digits, tmp_path):
    import shutil

    root = tmp_path / "train"
    shutil.copytree(digits["train"], root)
    (root / "7" / "zz_broken.png").write_bytes(b"\x89PNG truncated")
    model = make_tiny_image_model(tmp_path / "resnet", "resnet")
    recipe = image_recipe(tmp_path, model, {"train": root, "test": digits["test"]})
    code, _, err = run_cli("validate", str(recipe))
    assert code == 1 and "zz_broken.png" in err and "on_bad_image" in err
    code, out, err = run_cli("validate", str(recipe), "--set", "data.on_bad_image=skip")
    assert code == 0, err
    assert "zz_broken.png" in out and "10 labels" in out


def test_image_task_refuses_text_models_and_text_methods(digits, tmp_path, tiny_model):
    recipe = image_recipe(tmp_path, tiny_model, digits)
    code, _, err = run_cli("validate", str(recipe))
    assert code == 1 and "not an image-classification model" in err
    model = make_tiny_image_model(tmp_path / "resnet", "resnet")
    code, _, err = run_cli("validate", str(image_recipe(tmp_path, model, digits)), "--set", "method.name=prefix")
    assert code == 1 and "not supported yet for task image-classification" in err
