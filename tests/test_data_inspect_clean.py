"""`tuneforge data inspect` and `tuneforge data clean` on small files with known problems."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from conftest import run_cli, write_jsonl

# Line numbers (the __source_row__ of a .jsonl file) are the list positions + 1.
ROWS = [
    {"text": "the film was great", "label": "positive"},       # 1
    {"text": "the film was great", "label": "positive"},       # 2 exact duplicate of 1
    {"text": "The film was GREAT!", "label": "positive"},      # 3 near-duplicate of 1
    {"text": "a boring plot", "label": "negative"},            # 4
    {"text": "a boring plot", "label": "positive"},            # 5 conflict with 4
    {"text": "A boring plot.", "label": "negative"},           # 6 near-dup of 4, conflict group majority negative
    {"text": "   ", "label": "negative"},                      # 7 empty
    {"text": "good " * 40, "label": "positive"},               # 8 long (42 tokens with [CLS]/[SEP])
    {"text": "an awful story", "label": "negative"},           # 9
    {"text": "a lovely show", "label": "positive"},            # 10
]
TEST_ROWS = [
    {"text": "an awful story", "label": "negative"},           # 1 exact leak
    {"text": "A lovely show!", "label": "negative"},           # 2 normalised leak, different label
    {"text": "something new", "label": "positive"},            # 3
]


@pytest.fixture()
def files(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", ROWS), write_jsonl(tmp_path / "test.jsonl", TEST_ROWS)


def test_inspect_finds_every_problem_and_writes_json_and_html(files, tmp_path, tiny_model):
    train, test = files
    code, out, err = run_cli("data", "inspect", str(train), "--against", str(test), "--model", str(tiny_model),
                             "--max-length", "32", "--output", str(tmp_path / "report"))
    assert code == 0, err
    report = json.loads((tmp_path / "report/data_report.json").read_text())
    assert report["rows"] == 10
    assert report["labels"]["distribution"] == {"positive": 6, "negative": 4}
    assert report["labels"]["imbalance_ratio"] == pytest.approx(1.5)
    assert report["empty"] == {"count": 1, "rows": [7]}
    assert report["exact_duplicates"]["rows"] == 2  # rows 2 and 5 repeat an earlier text exactly
    assert report["near_duplicates"]["rows"] == 2   # rows 3 and 6 repeat one only after normalising
    conflicts = report["conflicting_labels"]
    assert conflicts["groups"] == 1 and conflicts["rows"] == 3
    assert sorted(conflicts["examples"][0]["rows"]) == [4, 5, 6]
    lengths = report["lengths"]
    assert lengths["max"] == 42 and lengths["over_max_length"] == 1 and lengths["over_max_length_rows"] == [8]
    leak = report["against"]
    assert (leak["test_rows"], leak["exact"], leak["normalised"], leak["different_label"]) == (3, 1, 2, 1)
    assert {(e["test_row"], e["train_row"]) for e in leak["examples"]} == {(1, 9), (2, 10)}
    html = (tmp_path / "report/data_report.html").read_text()
    for title in ("Label distribution", "Text length", "Duplicates", "Conflicting labels", "Leakage"):
        assert title in html
    assert "data:image/png;base64," in html
    # the printed summary has one line per finding
    assert "10 rows" in out and "imbalance ratio" in out and "exceed max_length 32" in out
    assert "exact duplicates: 2" in out and "conflicting labels: 1 text(s), 3 row(s)" in out
    assert "leakage: 2 of 3 rows" in out and "1 of them with a different label" in out

    # a report is never overwritten
    code, _, err = run_cli("data", "inspect", str(train), "--model", "none", "--output", str(tmp_path / "report"))
    assert code == 1 and "never overwrites" in err


def test_inspect_bad_input_is_one_clear_line(files, tmp_path):
    train, _ = files
    code, _, err = run_cli("data", "inspect", str(train), "--text-column", "sentence", "--model", "none")
    assert code == 1 and "no column 'sentence'" in err and "text, label" in err
    code, _, err = run_cli("data", "inspect", str(tmp_path / "nope.csv"), "--model", "none")
    assert code == 1 and "not found" in err
    multi = write_jsonl(tmp_path / "multi.jsonl", [{"text": "a", "labels": ["x", "y"]}])
    code, _, err = run_cli("data", "inspect", str(multi), "--label-column", "labels", "--model", "none")
    assert code == 1 and "multi-label" in err
    code, _, err = run_cli("data", "inspect", str(train), "--model", str(tmp_path / "no-model"))
    assert code == 1 and "does not exist" in err


def test_inspect_takes_columns_model_and_max_length_from_a_recipe(tmp_path, tiny_model):
    write_jsonl(tmp_path / "t.jsonl", [{"sentence": "good film", "y": 1}, {"sentence": "bad film", "y": 0}])
    (tmp_path / "r.yaml").write_text(f"name: r\nmodel: {tiny_model}\ndata: {{train: t.jsonl, text_column: sentence, "
                                     "label_column: y, max_length: 8}\nmethod: full\n")
    code, out, err = run_cli("data", "inspect", str(tmp_path / "t.jsonl"), "--recipe", str(tmp_path / "r.yaml"))
    assert code == 0, err
    assert "2 rows" in out and "max_length 8" in out and "labels: 2 (0 1, 1 1)" in out


def test_clean_writes_a_copy_and_logs_every_change(files, tmp_path):
    train, _ = files
    before = train.read_text()
    out_file = tmp_path / "clean.jsonl"
    code, out, err = run_cli("data", "clean", str(train), "--output", str(out_file), "--dedupe", "near",
                             "--resolve-conflicts", "majority", "--drop-empty")
    assert code == 0, err
    assert train.read_text() == before  # the input is never touched
    cleaned = pd.read_json(out_file, lines=True)
    assert cleaned["text"].tolist() == ["the film was great", "a boring plot", "good " * 40, "an awful story",
                                        "a lovely show"]
    assert cleaned["label"].tolist() == ["positive", "negative", "positive", "negative", "positive"]
    log = pd.read_csv(tmp_path / "clean.clean_log.csv", keep_default_na=False)
    # row 5 is first relabelled (majority of its conflict group), then removed as a copy of row 4
    assert [(r.row, r.action) for r in log.itertuples()] == [
        (2, "removed"), (3, "removed"), (5, "relabelled"), (5, "removed"), (6, "removed"), (7, "removed")]
    relabel = log[log["action"] == "relabelled"].iloc[0]
    assert (relabel["label"], relabel["new_label"]) == ("positive", "negative")
    assert "majority (negative: 2, positive: 1)" in relabel["reason"]
    assert "duplicate of row 1" in log[log["row"] == 3].iloc[0]["reason"]
    assert "10 rows" in out and "5 rows (5 removed, 1 relabelled)" in out


def test_clean_drop_conflicts_and_exact_dedupe(files, tmp_path):
    train, _ = files
    out_file = tmp_path / "clean.csv"
    code, out, err = run_cli("data", "clean", str(train), "--output", str(out_file), "--dedupe",
                             "--resolve-conflicts", "drop")
    assert code == 0, err
    cleaned = pd.read_csv(out_file, keep_default_na=False)
    assert "a boring plot" not in cleaned["text"].str.lower().str.strip(".").tolist()
    assert cleaned["text"].tolist().count("the film was great") == 1
    assert "The film was GREAT!" in cleaned["text"].tolist()  # exact dedupe keeps near-duplicates
    assert "   " in cleaned["text"].tolist()  # empty rows stay without --drop-empty
    log = pd.read_csv(tmp_path / "clean.clean_log.csv")
    assert sorted(log["row"]) == [2, 4, 5, 6] and set(log["action"]) == {"removed"}


def test_clean_refuses_to_overwrite_or_do_nothing(files, tmp_path):
    train, _ = files
    code, _, err = run_cli("data", "clean", str(train), "--output", str(train), "--dedupe")
    assert code == 1 and "never" in err
    code, _, err = run_cli("data", "clean", str(train), "--output", str(tmp_path / "x.jsonl"))
    assert code == 1 and "nothing to do" in err
    code, _, err = run_cli("data", "clean", str(train), "--output", str(tmp_path / "x.jsonl"), "--dedupe",
                           "--label-column", "stars")
    assert code == 1 and "no column 'stars'" in err


def test_inspect_sentence_pairs_compare_both_texts(tmp_path):
    rows = [{"text": "a man sleeps", "text_pair": "a man rests", "label": "entailment"},
            {"text": "a man sleeps", "text_pair": "a man runs", "label": "contradiction"},
            {"text": "A man sleeps.", "text_pair": "a man rests", "label": "neutral"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    code, out, err = run_cli("data", "inspect", str(path), "--text-pair-column", "text_pair", "--model", "none",
                             "--output", str(tmp_path / "r"))
    assert code == 0, err
    report = json.loads((tmp_path / "r/data_report.json").read_text())
    assert report["exact_duplicates"]["rows"] == 0  # same premise, other hypothesis: not a duplicate
    assert report["near_duplicates"]["rows"] == 1 and report["conflicting_labels"]["rows"] == 2
    assert "lengths" not in report
