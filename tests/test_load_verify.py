"""Never load a damaged model silently: every loader of a run (predict, eval, export, serve, a distillation
teacher) and of an export folder (serve) checks each file's sha256 against ``artifacts.json`` first and
refuses a changed file with one line naming it; ``--no-verify`` skips the check (docs/reliability.md §6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli, synthetic_rows, write_jsonl
from tiny_runs import shared_tiny_run

from tuneforge.apps.export import export_run, load_classifier
from tuneforge.base.integrity import ARTIFACTS_NAME, IntegrityError, skip_verification, verify_run_files
from tuneforge.core.engine.distill import load_teacher
from tuneforge.base.recipe import DistillConfig


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model) -> Path:
    return shared_tiny_run(tmp_path_factory, tiny_model)


def flip_one_byte(path: Path, offset: int = -100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture()
def damaged_run(tiny_run, tmp_path) -> Path:
    """A copy of the tiny run with one flipped byte in model/model.safetensors (near its end: a weight)."""
    copy = tmp_path / "damaged"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("export"))
    flip_one_byte(copy / "model" / "model.safetensors")
    return copy


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_predict_eval_export_refuse_a_flipped_byte_and_name_the_file(damaged_run, tmp_path):
    damaged_file = str(damaged_run / "model" / "model.safetensors")
    labelled = write_jsonl(tmp_path / "eval.jsonl", synthetic_rows(8, seed=5))
    for argv in (["predict", str(damaged_run), "--text", "a good film"],
                 ["eval", str(damaged_run), "--data", str(labelled)],
                 ["export", str(damaged_run), "--format", "onnx", "--no-benchmark"]):
        code, out, err = run_cli(*argv)
        assert code == 1, (argv, out, err)
        line = one_error_line(err)
        assert damaged_file in line and "sha256" in line and "--no-verify" in line, line
    assert not (damaged_run / "export").exists()  # export refused before writing anything

    # the explicit flag loads it anyway (the flipped bit is in a weight, the file still parses)
    code, out, err = run_cli("predict", str(damaged_run), "--text", "a good film", "--no-verify")
    assert code == 0, err


def test_serve_and_teacher_loading_refuse_the_damaged_run(damaged_run, tiny_run):
    with pytest.raises(IntegrityError, match="model/model.safetensors: changed since it was checked"):
        load_classifier(damaged_run)  # what `tuneforge serve RUN_DIR` loads at start
    with pytest.raises(IntegrityError, match="model.safetensors"):
        load_teacher(DistillConfig(teacher=str(damaged_run)), max_length=32)
    with skip_verification():
        assert load_classifier(damaged_run).label_names == ["negative", "positive"]
    assert load_classifier(tiny_run).label_names == ["negative", "positive"]  # the intact original loads


def test_a_missing_file_a_missing_record_and_a_failed_gate_are_refused(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns("export"))
    (copy / "model" / "config.json").unlink()
    with pytest.raises(IntegrityError, match=r"model/config.json: missing \(artifacts.json records it\)"):
        verify_run_files(copy)

    shutil.copy(tiny_run / "model" / "config.json", copy / "model" / "config.json")
    verify_run_files(copy)  # restored: intact again
    record = json.loads((copy / ARTIFACTS_NAME).read_text())
    record["artifacts"]["run"]["passed"] = False
    record["artifacts"]["run"]["probe"]["problems"] = ["max |Δlogit| 0.4 > tolerance 0.0001"]
    (copy / ARTIFACTS_NAME).write_text(json.dumps(record))
    with pytest.raises(IntegrityError, match="failed its integrity gate when it was written"):
        verify_run_files(copy)

    (copy / ARTIFACTS_NAME).unlink()
    code, _, err = run_cli("predict", str(copy), "--text", "a good film")
    assert code == 1 and "has no artifacts.json" in one_error_line(err)


def test_serve_refuses_an_export_whose_model_file_changed(tiny_run, tmp_path):
    out, _ = export_run(tiny_run, "safetensors", output=tmp_path / "st", measure=False)
    assert load_classifier(out).label_names == ["negative", "positive"]
    flip_one_byte(out / "model.safetensors")
    with pytest.raises(IntegrityError, match=r"st/model.safetensors: changed since it was checked"):
        load_classifier(out)
    with skip_verification():
        load_classifier(out)
