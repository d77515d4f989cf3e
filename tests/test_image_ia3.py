"""IA3 on image classifiers: a tiny random ViT gets the paper's placement (attention keys and values, and the
feed-forward activations: the input of the MLP's second layer), its head trains fully, the merged model answers
as base + adapter does; convolutional models, AdaLoRA and prompt methods are refused with the reason."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli
from test_image_classification import make_tiny_image_model
from test_image_peft import assert_merged_equals_base_plus_adapter, few_digits, lora_recipe  # noqa: F401


def test_ia3_on_a_vision_transformer_rescales_keys_values_and_ffn_and_merges(few_digits, tmp_path):  # noqa: F811
    from safetensors.torch import load_file

    source = make_tiny_image_model(tmp_path / "vit", "vit")
    run = tmp_path / "run"
    recipe = lora_recipe(tmp_path, source, few_digits, "  name: ia3")
    code, out, err = run_cli("train", str(recipe), "--output", str(run))
    assert code == 0, err
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == ["fc2", "k_proj", "v_proj"]
    assert adapter_config["feedforward_modules"] == ["fc2"] and adapter_config["modules_to_save"] == ["classifier"]
    assert json.loads((run / "save_check.json").read_text())["passed"]
    assert json.loads((run / "artifacts.json").read_text())["artifacts"]["run"]["passed"]

    adapter = load_file(run / "adapter" / "adapter_model.safetensors")
    vectors = {key: value for key, value in adapter.items() if "ia3_l" in key}
    assert len(vectors) == 3 * 2  # k, v and fc2 in each of the 2 layers
    assert any(not torch.allclose(value, torch.ones_like(value)) for value in vectors.values())  # they trained
    # independently of tuneforge: original weights + fresh 10-way head + the adapter == the merged run/model
    assert_merged_equals_base_plus_adapter(source, run, few_digits)


@pytest.mark.parametrize("kind, method, reason", [
    ("resnet", "ia3", "convolutional model"),
    ("vit", "adalora", "not wired for image models"),
    ("vit", "prompt", "no token sequence"),
])
def test_unsupported_image_methods_say_why(few_digits, tmp_path, kind, method, reason):  # noqa: F811
    source = make_tiny_image_model(tmp_path / kind, kind)
    code, _, err = run_cli("validate", str(lora_recipe(tmp_path, source, few_digits, f"  name: {method}")))
    assert code == 1 and reason in err and "lora" in err, err
