"""task: multitask is not built yet: the recipe says so at validation, before anything is loaded."""

from __future__ import annotations

from conftest import run_cli, synthetic_rows, write_jsonl


def test_multitask_recipe_is_refused_as_not_supported_yet(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(20, seed=0))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: mt\nmodel: minilm\ntask: multitask\ndata: {train: train.jsonl}\nmethod: {name: full}\n",
                      encoding="utf-8")
    code, _, err = run_cli("validate", str(recipe))
    assert code == 1
    assert "recipe.yaml:3:1: task: task multitask is not supported yet" in err
