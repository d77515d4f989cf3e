"""`tuneforge compare` on the tiny model, and the loop's time budget it relies on."""

from __future__ import annotations

import json

from conftest import run_cli


def test_compare_trains_each_method_and_writes_the_table(tiny_job, tmp_path):
    folder = tmp_path / "cmp"
    code, out, err = run_cli("compare", str(tiny_job), "--methods", "full,lora", "--budget-minutes", "5",
                             "--set", "train.epochs=2", "--output", str(folder))
    assert code == 0, err
    for name in ("compare.md", "compare.json", "compare.png", "full/run.json", "lora/adapter", "logs/lora.log"):
        assert (folder / name).exists(), name
    summary = json.loads((folder / "compare.json").read_text())
    rows = {row["method"]: row for row in summary["methods"]}
    assert list(rows) == ["full", "lora"] and summary["budget_minutes"] == 5
    for name, row in rows.items():
        assert row["status"] == "completed", row
        assert row["peak_memory_mb"] > 100  # a Python process with torch: measured, not zero
        assert row["train_seconds"] > 0 and row["samples_per_s"] > 0
        assert row["epochs_trained"] == 2 and not row["time_budget_reached"]
        assert {"accuracy", "f1_macro"} <= set(row["test"]) and {"accuracy", "f1_macro"} <= set(row["validation"])
        config = (folder / name / "config.yaml").read_text()
        assert f"name: {name}" in config and "time_budget_minutes: 5" in config
    assert rows["lora"]["trainable_params"] < rows["full"]["trainable_params"] == rows["full"]["total_params"]
    # learning rates: the recipe's for its own method (full), each other method's default
    assert rows["full"]["learning_rate"] == 3.0e-3 and rows["lora"]["learning_rate"] == 1e-3
    table = (folder / "compare.md").read_text()
    assert "| method | trainable params | trainable % | peak memory (MB)" in table
    assert table.count("\n| ") >= 3 and "compare.png" in table
    assert "| method |" in out  # the table is printed too


def test_compare_checks_every_method_before_training(tiny_job, tmp_path):
    code, _, err = run_cli("compare", str(tiny_job), "--methods", "full,lorra", "--output", str(tmp_path / "c"))
    assert code == 1 and "lorra" in err and "lora" in err
    assert not (tmp_path / "c").exists()
    # the recipe itself is validated (data, model, method keys) before the first method trains
    code, _, err = run_cli("compare", str(tiny_job), "--methods", "full,lora", "--set", "method.name=freeze",
                           "--set", "method.unfreeze_top_layers=9", "--output", str(tmp_path / "d"))
    assert code == 1 and "unfreeze_top_layers" in err and not (tmp_path / "d").exists()


def test_time_budget_stops_training_and_keeps_a_model(tiny_job, tmp_path):
    run = tmp_path / "run"
    code, out, err = run_cli("train", str(tiny_job), "--set", "train.time_budget_minutes=0.0001",
                             "--output", str(run))
    assert code == 0, err
    assert "time budget of 0.0001 min reached after 1 optimizer steps" in err
    epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "validation_loss" in line]
    assert len(epochs) == 1 and epochs[0]["time_budget_reached"] and epochs[0]["step"] == 1
    assert (run / "model/config.json").is_file() and json.loads((run / "run.json").read_text())["best_epoch"] == 1


def test_failed_method_is_a_row_not_a_crash():
    from tuneforge.apps.compare import MethodResult, table_markdown

    table = table_markdown([MethodResult(method="prefix", status="failed", run_dir="x", learning_rate=1e-2,
                                         error="UserError: not supported yet")])
    assert "| prefix | failed: UserError: not supported yet |" in table
