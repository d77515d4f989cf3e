"""The recipe: defaults, overrides, path resolution and error messages with file:line:col."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.core.recipe import load_recipe
from tuneforge.base.errors import UserError

MINIMAL = """name: t
model: minilm
data:
  train: train.jsonl
method:
  name: lora
train:
  epochs: 2
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_relative_paths(tmp_path):
    recipe = load_recipe(write(tmp_path, MINIMAL))
    assert recipe.data.train == (tmp_path / "train.jsonl").resolve()
    assert recipe.method.r == 16 and recipe.method.alpha == 32
    assert recipe.train.epochs == 2 and recipe.train.scheduler == "linear"
    assert recipe.train.early_stopping.metric == "f1_macro"


def test_overrides_are_yaml_typed_and_paths_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(write(tmp_path, MINIMAL), ["train.epochs=5", "method.r=4", "train.early_stopping=null",
                                                    "data.test=sub/test.csv", "train.class_weights={spam: 3}"])
    assert recipe.train.epochs == 5 and recipe.method.r == 4
    assert recipe.train.early_stopping is None
    assert recipe.data.test == tmp_path / "sub" / "test.csv"
    assert recipe.train.class_weights == {"spam": 3.0}


def test_switching_method_by_override_drops_the_old_methods_keys_only(tmp_path):
    path = write(tmp_path, MINIMAL.replace("name: lora", "name: lora\n  r: 8\n  alpha: 16"))
    recipe = load_recipe(path, ["method.name=freeze"])
    assert recipe.method.name == "freeze" and recipe.method.unfreeze_top_layers == 0
    with pytest.raises(UserError, match=r"--set method.r: unknown key 'r'"):
        load_recipe(path, ["method.name=freeze", "method.r=4"])
    with pytest.raises(UserError, match=r"method.rr: unknown key 'rr'"):
        load_recipe(write(tmp_path, MINIMAL.replace("name: lora", "name: lora\n  rr: 8")), ["method.name=freeze"])


@pytest.mark.parametrize(
    "text, expected",
    [
        (MINIMAL.replace("  epochs: 2", "  learning_rat: 0.1"),
         r"recipe.yaml:8:3: train.learning_rat: unknown key 'learning_rat' \(did you mean 'learning_rate'\?\)"),
        (MINIMAL.replace("name: lora", "name: lorra"),
         r"recipe.yaml:6:3: method.name: unknown method 'lorra' \(did you mean 'lora'\?\)"),
        (MINIMAL.replace("  epochs: 2", "  epochs: zero"), r"recipe.yaml:8:3: train.epochs: .*integer"),
        (MINIMAL + "trian: {}\n", r"recipe.yaml:9:1: trian: unknown key 'trian' \(did you mean 'train'\?\)"),
        (MINIMAL.replace("  train: train.jsonl", "  text_column: t"), r"recipe.yaml:3:1: data.train: missing required key"),
        (MINIMAL.replace("  epochs: 2", "  precision: fp8"), r"train.precision: Input should be 'auto', 'fp32'"),
        ("name: t\nmodel: [unclosed\ndata: {}\n", r"recipe.yaml:3:5: not valid YAML"),
    ],
)
def test_recipe_errors_name_file_line_and_fix(tmp_path, text, expected):
    with pytest.raises(UserError, match=expected):
        load_recipe(write(tmp_path, text))


def test_override_error_points_at_the_flag(tmp_path):
    with pytest.raises(UserError, match=r"--set train.batch_size: .*greater than or equal to 1"):
        load_recipe(write(tmp_path, MINIMAL), ["train.batch_size=0"])


def test_every_problem_is_reported_at_once(tmp_path):
    text = MINIMAL.replace("  epochs: 2", "  epochz: 2\n  warmup_ratio: 2")
    with pytest.raises(UserError) as caught:
        load_recipe(write(tmp_path, text))
    lines = str(caught.value).splitlines()
    assert len(lines) == 2 and "epochz" in lines[0] + lines[1] and "warmup_ratio" in lines[0] + lines[1]
