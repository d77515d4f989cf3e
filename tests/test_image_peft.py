"""LoRA / DoRA on image classifiers (issue 12 follow-up): a tiny random ViT (attention q_proj/v_proj) and a tiny
ResNet (Conv2d layers) train a few steps on digits PNGs, the head trains fully (modules_to_save), the run's
merged plain model answers as base + adapter does, and merge: false runs load back through the method."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from test_image_classification import make_tiny_image_model


def write_few_digits(root: Path, train: int = 96, test: int = 32) -> dict[str, Path]:
    """Small train/test ImageFolders of scikit-learn's digits (enough for a few optimizer steps)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(1).permutation(len(digits.images))[:train + test]
    folders = {"train": root / "train", "test": root / "test"}
    for position, index in enumerate(order):
        folder = folders["train" if position < train else "test"] / str(digits.target[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((digits.images[index] * (255 / 16)).astype(np.uint8), mode="L").save(folder / f"{index}.png")
    return folders


@pytest.fixture(scope="module")
def few_digits(tmp_path_factory) -> dict[str, Path]:
    return write_few_digits(tmp_path_factory.mktemp("few-digits"))


def lora_recipe(folder: Path, model: Path, digits: dict[str, Path], method: str) -> Path:
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""name: digits-lora
model: {model}
task: image-classification
data:
  train: {digits['train']}
  test: {digits['test']}
method:
{method}
train:
  epochs: 2
  batch_size: 32
  learning_rate: 1.0e-2
  warmup_ratio: 0.0
  early_stopping: null
  num_threads: 1
""", encoding="utf-8")
    return recipe


def probe_pixels(digits: dict[str, Path], model_dir: Path) -> torch.Tensor:
    from PIL import Image
    from transformers import AutoImageProcessor

    paths = sorted(digits["test"].rglob("*.png"))[:16]
    processor = AutoImageProcessor.from_pretrained(model_dir)
    return processor([Image.open(path).convert("RGB") for path in paths], return_tensors="pt")["pixel_values"]


def assert_merged_equals_base_plus_adapter(source: Path, run: Path, digits: dict[str, Path]) -> None:
    """Without tuneforge: ``source`` with a fresh 10-way head + ``run/adapter`` answers as ``run/model`` does."""
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForImageClassification

    merged = AutoModelForImageClassification.from_pretrained(run / "model").eval()
    config = AutoConfig.from_pretrained(source, num_labels=10, id2label=merged.config.id2label,
                                        label2id=merged.config.label2id)
    base = AutoModelForImageClassification.from_pretrained(source, config=config, ignore_mismatched_sizes=True)
    unmerged = PeftModel.from_pretrained(base, run / "adapter").eval()
    pixels = probe_pixels(digits, run / "model")
    with torch.no_grad():
        torch.testing.assert_close(merged(pixel_values=pixels).logits, unmerged(pixel_values=pixels).logits,
                                   atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind, expected_targets", [("vit", ["q_proj", "v_proj"]), ("resnet", None)])
def test_lora_on_image_model_merges_into_a_plain_model_with_equal_logits(few_digits, tmp_path, kind,
                                                                         expected_targets):
    from transformers import AutoModelForImageClassification

    source = make_tiny_image_model(tmp_path / kind, kind)
    run = tmp_path / "run"
    recipe = lora_recipe(tmp_path, source, few_digits, "  name: lora\n  r: 4\n  alpha: 8\n  dropout: 0.0")
    code, out, err = run_cli("train", str(recipe), "--output", str(run))
    assert code == 0, err

    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    targets = sorted(adapter_config["target_modules"])
    if expected_targets is not None:
        assert targets == expected_targets
    else:  # the ResNet's convolutions (stem, stages, shortcuts) are adapted, the head is not
        assert targets and all(name.endswith("convolution") for name in targets)
    modules_to_save = adapter_config["modules_to_save"]
    assert modules_to_save[0] == "classifier"  # the new head trains fully
    if kind == "resnet":  # and its BatchNorm layers (their running statistics move while training)
        assert len(modules_to_save) > 1 and all(name.endswith("normalization") for name in modules_to_save[1:])
    save_check = json.loads((run / "save_check.json").read_text())
    assert save_check["passed"] and save_check["max_abs_logit_difference"] <= 1e-4
    assert json.loads((run / "artifacts.json").read_text())["artifacts"]["run"]["passed"]

    merged = AutoModelForImageClassification.from_pretrained(run / "model").eval()
    labels = [merged.config.id2label[i] for i in range(merged.config.num_labels)]
    assert sorted(labels) == [str(digit) for digit in range(10)]
    # Independently of tuneforge: the original random model with a fresh 10-way head + the saved adapter
    # (its LoRA matrices and the trained head) must answer as the merged plain model does.
    assert_merged_equals_base_plus_adapter(source, run, few_digits)

    # Training did something: the LoRA update is non-zero (B starts at zero), so merging changed the body.
    from safetensors.torch import load_file

    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in key and value.abs().max() > 0 for key, value in adapter.items())
    original = AutoModelForImageClassification.from_pretrained(source).state_dict()
    merged_state = merged.state_dict()
    adapted = [key for key in merged_state if key.endswith("weight") and "classifier" not in key and
               any(key.endswith(f"{target}.weight") for target in targets)]
    assert adapted and any(not torch.equal(merged_state[key], original[key]) for key in adapted)


def test_dora_without_merge_keeps_base_and_adapter_and_predicts(few_digits, tmp_path):
    source = make_tiny_image_model(tmp_path / "resnet", "resnet")
    run = tmp_path / "run"
    recipe = lora_recipe(tmp_path, source, few_digits,
                         "  name: dora\n  r: 4\n  merge: false\n  target_modules: [convolution]")
    code, out, err = run_cli("train", str(recipe), "--output", str(run))
    assert code == 0, err
    assert (run / "base" / "config.json").is_file() and not (run / "model" / "config.json").is_file()
    assert json.loads((run / "artifacts.json").read_text())["artifacts"]["run"]["passed"]  # reloaded as base + adapter
    code, out, err = run_cli("predict", str(run), "--input", str(few_digits["test"] / "3"),
                             "--output", str(tmp_path / "p.csv"))
    assert code == 0, err
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + len(list((few_digits["test"] / "3").iterdir()))


def test_unsupported_peft_method_is_refused_for_image_models(few_digits, tmp_path):
    source = make_tiny_image_model(tmp_path / "vit", "vit")
    recipe = lora_recipe(tmp_path, source, few_digits, "  name: prefix")
    code, _, err = run_cli("validate", str(recipe))
    assert code != 0 and "not supported yet for task image-classification" in err and "lora" in err
