"""tuneforge export on a tiny trained run: ONNX (fp32 and INT8), TorchScript, safetensors; the parity check
(and that it fires on a broken model); the report; the standalone onnxruntime script of docs/export.md."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, synthetic_rows, write_jsonl
from tiny_runs import shared_tiny_run

from tuneforge.apps.export import export_run, load_classifier
from tuneforge.apps.export.latency import BenchSettings
from tuneforge.apps.export.parity import ParityError, compare_logits

DOCS = Path(__file__).resolve().parents[1] / "docs" / "export.md"
FAST = BenchSettings(latency_runs=20, warmup=2, throughput_rows=64, rounds=2)
TEXTS = [r["text"] for r in synthetic_rows(40, seed=11)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model) -> Path:
    return shared_tiny_run(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def reference_labels(tiny_run) -> list[str]:
    from tuneforge.core.tasks.predictor import Predictor

    predictor = Predictor(tiny_run)
    return [predictor.label_names[i] for i in predictor.probabilities(TEXTS).argmax(axis=1)]


@pytest.fixture(scope="module")
def onnx_export(tiny_run, tmp_path_factory) -> tuple[Path, dict]:
    return export_run(tiny_run, "onnx", output=tmp_path_factory.mktemp("exports") / "onnx", measure=False)


def test_onnx_export_writes_model_tokenizer_labels_and_a_passing_report(onnx_export, tiny_run, reference_labels):
    out, report = onnx_export
    for name in ("model.onnx", "tokenizer.json", "labels.json", "export_report.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "labels.json").read_text()) == ["negative", "positive"]
    on_disk = json.loads((out / "export_report.json").read_text())
    assert on_disk["status"] == "ok" and on_disk["format"] == "onnx" and on_disk["quantize"] is None
    parity = on_disk["parity"]
    assert parity["passed"] and parity["agreement"] == 1.0 and parity["max_abs_logit_diff"] < 1e-4
    assert parity["n_examples"] == 24 and "validation split" in parity["rows"]  # 10% of 240 rows
    assert on_disk["input_names"] == ["input_ids", "attention_mask", "token_type_ids"] and on_disk["max_length"] == 32
    # the export folder classifies like the run
    classifier = load_classifier(out)
    assert [classifier.label_names[i] for i in classifier.logits(TEXTS).argmax(axis=1)] == reference_labels


def test_onnx_graph_has_dynamic_batch_and_sequence_axes(onnx_export):
    import onnxruntime as ort

    out, _ = onnx_export
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask", "token_type_ids"]
    for batch, sequence in ((1, 2), (7, 31), (3, 9)):
        feed = {n: np.ones((batch, sequence), dtype=np.int64) for n in names}
        feed["token_type_ids"][:] = 0
        assert session.run(None, feed)[0].shape == (batch, 2)


def test_standalone_onnxruntime_script_from_the_docs_gives_the_same_labels(onnx_export, reference_labels, tmp_path):
    """Acceptance: the script in docs/export.md (no tuneforge import) labels texts like tuneforge predict."""
    text = DOCS.read_text(encoding="utf-8")
    script = re.search(r"<!-- standalone-onnx-script -->\s*```python\n(.*?)```", text, re.S).group(1)
    assert "tuneforge" not in script
    assert len([line for line in script.splitlines() if line.strip() and not line.startswith("#")]) <= 11
    path = tmp_path / "predict_onnx.py"
    path.write_text(script, encoding="utf-8")
    out, _ = onnx_export
    result = subprocess.run([sys.executable, str(path), str(out), *TEXTS], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    labels = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert labels == reference_labels


def test_onnx_int8_reports_before_and_after(tiny_run, tmp_path):
    out, report = export_run(tiny_run, "onnx", "int8", tmp_path / "onnx-int8", settings=FAST)
    assert report["parity"]["passed"] and report["parity"]["agreement"] >= 0.99
    assert report["parity"]["max_abs_logit_diff"] > 0  # it really is another model
    variants = report["benchmark"]["variants"]
    assert list(variants) == ["pytorch fp32", "onnx fp32", "onnx int8"]  # the reference, before, after
    for row in variants.values():
        assert row["size_mb"] > 0 and row["latency_batch1_p50_ms"] > 0 and row["throughput_batch32_rows_per_s"] > 0
        assert row["latency_batch1_p95_ms"] >= row["latency_batch1_p50_ms"]
        assert row["test"]["n_examples"] == 80 and row["test"]["accuracy"] > 0.8
        assert "accuracy_change_points_vs_pytorch_fp32" in row and "speedup_batch1_vs_pytorch_fp32" in row
    assert variants["onnx fp32"]["test"]["accuracy"] == variants["pytorch fp32"]["test"]["accuracy"]
    assert variants["onnx int8"]["size_mb"] < variants["onnx fp32"]["size_mb"]
    assert report["benchmark"]["threads"] >= 1 and report["benchmark"]["test_set"].endswith("test.jsonl")
    assert sorted(p.name for p in out.glob("*.onnx")) == ["model.onnx"]  # one model per export folder
    import onnx

    ops = {node.op_type for node in onnx.load(str(out / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}, ops


@pytest.mark.parametrize("fmt,quantize", [("torchscript", None), ("torchscript", "int8"), ("safetensors", None)])
def test_torchscript_and_safetensors_exports_load_and_agree(tiny_run, tmp_path, reference_labels, fmt, quantize):
    code, out, err = run_cli("export", str(tiny_run), "--format", fmt, *(["--quantize", quantize] if quantize else []),
                             "--output", str(tmp_path / "export"), "--no-benchmark")
    assert code == 0, err
    assert "agreement 100.00%" in out
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert report["status"] == "ok" and "benchmark" not in report
    classifier = load_classifier(tmp_path / "export")
    assert classifier.description == f"export folder, {fmt} {quantize or 'fp32'}"
    labels = [classifier.label_names[i] for i in classifier.logits(TEXTS).argmax(axis=1)]
    assert np.mean(np.array(labels) == np.array(reference_labels)) >= 0.95


def test_parity_check_fails_loudly_on_a_broken_export(tiny_run, onnx_export, tmp_path, monkeypatch):
    """Break the exported graph on purpose (negated logits): export must exit 1 and serve must refuse it."""
    import onnx
    from onnx import helper

    import tuneforge.apps.export.onnx as onnx_export_module

    good_model = onnx_export[0] / "model.onnx"

    def broken_export(model, example, input_names, path):  # the fixture's good export, with negated logits
        graph_model = onnx.load(str(good_model))
        for node in graph_model.graph.node:
            node.output[:] = ["raw_logits" if o == "logits" else o for o in node.output]
        graph_model.graph.node.append(helper.make_node("Neg", ["raw_logits"], ["logits"]))
        onnx.save(graph_model, str(path))

    monkeypatch.setattr(onnx_export_module, "export_onnx", broken_export)
    out = tmp_path / "broken"
    code, _, err = run_cli("export", str(tiny_run), "--format", "onnx", "--output", str(out), "--no-benchmark")
    assert code == 1
    assert "failed its parity check" in err and "agree on 0.00% of 24" in err and "Do not ship" in err
    report = json.loads((out / "export_report.json").read_text())
    assert report["status"] == "failed" and not report["parity"]["passed"] and report["parity"]["disagreements"] == 24
    with pytest.raises(Exception, match="failed its parity check"):
        load_classifier(out)
    code, _, err = run_cli("serve", str(out), "--port", "1")
    assert code == 1 and "failed its parity check" in err


def test_compare_logits_threshold():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 3)).astype(np.float32)

    def disagree_on(count: int) -> np.ndarray:
        candidate = reference.copy()
        for i in range(count):
            candidate[i, (reference[i].argmax() + 1) % 3] = reference[i].max() + 1
        return candidate

    result = compare_logits(reference, disagree_on(2))  # 198 of 200 agree: 99.0%, passes
    assert result["agreement"] == 0.99 and result["passed"] and result["disagreements"] == 2
    assert result["max_abs_logit_diff"] > 0
    assert not compare_logits(reference, disagree_on(3))["passed"]
    assert compare_logits(reference, reference)["max_abs_logit_diff"] == 0
    candidate = reference.copy()
    candidate[0, 0] = np.nan
    assert not compare_logits(reference, candidate)["passed"]
    with pytest.raises(ParityError, match="shape"):
        compare_logits(reference, reference[:, :2])


def test_export_refuses_what_it_cannot_do(tiny_run, tmp_path):
    code, _, err = run_cli("export", str(tiny_run), "--format", "safetensors", "--quantize", "int8")
    assert code == 1 and "not supported yet" in err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("x")
    code, _, err = run_cli("export", str(tiny_run), "--format", "onnx", "--output", str(tmp_path / "taken"))
    assert code == 1 and "never overwrites" in err
    code, _, err = run_cli("export", str(tmp_path / "nope"), "--format", "onnx")
    assert code == 1 and "not found" in err
    # a run of another task (generative runs do not exist yet) is refused plainly, by export and serve
    other = tmp_path / "generative-run"
    other.mkdir()
    config = (tiny_run / "config.yaml").read_text()
    (other / "config.yaml").write_text(re.sub(r"(?m)^task: .*$", "task: generation", config)
                                       if "task:" in config else config + "task: generation\n")
    for argv in (("export", str(other), "--format", "onnx"), ("serve", str(other))):
        code, _, err = run_cli(*argv)
        assert code == 1 and "task 'generation'" in err and "not supported yet" in err, err


def test_parity_rows_from_data_when_the_runs_data_is_gone(tiny_run, tmp_path):
    moved = tmp_path / "moved-run"
    import shutil

    shutil.copytree(tiny_run, moved, ignore=shutil.ignore_patterns("export"))
    config = (moved / "config.yaml").read_text()
    (moved / "config.yaml").write_text(config.replace(str(tiny_run.parent / "train.jsonl"), str(tmp_path / "gone.jsonl")))
    code, _, err = run_cli("export", str(moved), "--format", "safetensors", "--output", str(tmp_path / "a"),
                           "--no-benchmark")
    assert code == 1 and "needs the run's validation data" in err and "--data FILE" in err
    write_jsonl(tmp_path / "rows.jsonl", [{"text": t} for t in TEXTS])
    code, out, err = run_cli("export", str(moved), "--format", "safetensors", "--output", str(tmp_path / "b"),
                             "--no-benchmark", "--data", str(tmp_path / "rows.jsonl"))
    assert code == 0, err
    assert f"on 40 rows of {tmp_path / 'rows.jsonl'}" in out


def test_a_crashed_export_leaves_no_folder_behind(tiny_run, tmp_path, monkeypatch):
    import tuneforge.apps.export.torchscript as torchscript_module

    def crash(*args, **kwargs):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torchscript_module, "export_torchscript", crash)
    with pytest.raises(RuntimeError, match="exporter crashed"):
        export_run(tiny_run, "torchscript", output=tmp_path / "crashed", measure=False)
    assert not (tmp_path / "crashed").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RuntimeError):
        export_run(tiny_run, "torchscript", output=tmp_path / "empty", measure=False)
    assert list((tmp_path / "empty").iterdir()) == []
