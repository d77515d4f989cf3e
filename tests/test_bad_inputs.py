"""Every bad input a new user is likely to make: one clear line naming the problem and the fix, exit code 1,
no traceback, and no run folder left behind."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import run_cli, synthetic_rows, write_jsonl


def recipe(tmp_path, model, extra_data: str = "", method: str = "full", train: str = "") -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(f"name: bad\nmodel: {model}\ndata:\n  train: train.jsonl\n{extra_data}method:\n  name: {method}\n"
                    f"train:\n  epochs: 1\n{train}", encoding="utf-8")
    return str(path)


def assert_one_clear_line(tmp_path, argv, *fragments):
    output = tmp_path / "out"
    code, out, err = run_cli(*argv, "--output", str(output)) if argv[0] == "train" else run_cli(*argv)
    assert code == 1, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert not output.exists(), "a failed validation must leave no run folder"
    return lines[0]


@pytest.fixture()
def good_train(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", synthetic_rows(60, seed=3))


def test_missing_data_file(tmp_path, tiny_model):
    assert_one_clear_line(tmp_path, ["train", recipe(tmp_path, tiny_model)], "train.jsonl: data file not found")


def test_unsupported_extension(tmp_path, tiny_model, good_train):
    (tmp_path / "train.xlsx").write_text("x")
    path = recipe(tmp_path, tiny_model).replace("", "")
    text = open(path).read().replace("train.jsonl", "train.xlsx")
    open(path, "w").write(text)
    assert_one_clear_line(tmp_path, ["train", path], "train.xlsx: unsupported file type '.xlsx'", ".csv", ".parquet")


def test_missing_column_lists_the_columns_the_file_has(tmp_path, tiny_model, good_train):
    line = assert_one_clear_line(tmp_path, ["train", recipe(tmp_path, tiny_model, "  text_column: sentence\n")],
                                 "no column 'sentence' (data.text_column)", "columns: text, label")
    assert "train.jsonl" in line


def test_empty_texts_name_their_rows_and_drop_works(tmp_path, tiny_model):
    rows = synthetic_rows(60, seed=3)
    rows[4]["text"] = "   "
    rows[9]["text"] = ""
    write_jsonl(tmp_path / "train.jsonl", rows)
    assert_one_clear_line(tmp_path, ["train", recipe(tmp_path, tiny_model)], "empty or whitespace-only",
                          "rows 5, 10", "data.on_empty: drop")
    code, out, err = run_cli("validate", recipe(tmp_path, tiny_model, "  on_empty: drop\n"))
    assert code == 0, err
    assert "dropped 2 empty text(s) at rows 5, 10" in out


def test_test_labels_unknown_to_train(tmp_path, tiny_model, good_train):
    write_jsonl(tmp_path / "test.jsonl", [{"text": "good film", "label": "neutral"}, {"text": "bad", "label": "positive"}])
    assert_one_clear_line(tmp_path, ["train", recipe(tmp_path, tiny_model, "  test: test.jsonl\n")],
                          "test.jsonl", "'neutral'", "do not occur in the train set")


def test_class_too_small_to_stratify(tmp_path, tiny_model):
    rows = synthetic_rows(40, seed=3) + [{"text": "the plot", "label": "rare"}]
    write_jsonl(tmp_path / "train.jsonl", rows)
    assert_one_clear_line(tmp_path, ["train", recipe(tmp_path, tiny_model)], "'rare'", "fewer than 2 rows",
                          "give data.validation")


def test_unknown_key_and_method(tmp_path, tiny_model, good_train):
    assert_one_clear_line(tmp_path, ["train", recipe(tmp_path, tiny_model, train="  batchsize: 8\n")],
                          "train.batchsize: unknown key", "did you mean 'batch_size'?")
    assert_one_clear_line(tmp_path, ["train", recipe(tmp_path, tiny_model, method="fulll")],
                          "unknown method 'fulll'", "did you mean 'full'?")


def test_bad_json_line(tmp_path, tiny_model):
    (tmp_path / "train.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": "b", label: "y"}\n')
    assert_one_clear_line(tmp_path, ["train", recipe(tmp_path, tiny_model)], "train.jsonl:2:", "not valid JSON")


def test_unknown_model(tmp_path, good_train):
    assert_one_clear_line(tmp_path, ["train", recipe(tmp_path, "./no/such/folder")], "does not exist")


def test_freeze_more_layers_than_the_model_has(tmp_path, tiny_model, good_train):
    path = recipe(tmp_path, tiny_model, method="freeze\n  unfreeze_top_layers: 9")
    assert_one_clear_line(tmp_path, ["train", path], "unfreeze_top_layers=9", "has 3 layers")


def test_predict_on_a_folder_that_is_not_a_run(tmp_path):
    code, _, err = run_cli("predict", str(tmp_path), "--text", "hello")
    assert code == 1 and "not a tuneforge run folder" in err


def test_console_script_prints_no_traceback(tmp_path, tiny_model, good_train):
    """The real entry point, in a subprocess: exit status and stderr as a user sees them."""
    path = recipe(tmp_path, tiny_model, train="  epochz: 3\n")
    result = subprocess.run([sys.executable, "-m", "tuneforge", "train", path], capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "did you mean 'epochs'?" in result.stderr
