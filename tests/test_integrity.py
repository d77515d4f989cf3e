"""The integrity gates (tuneforge/base/integrity.py): each artifact is broken on purpose — the head dropped from
the saved file, one tensor corrupted, a merge that changes the outputs, a layer quantized with a wrong
scale — and the gate must fail the command with a message that says what is wrong and where the good
weights are; an intact run and export are recorded in artifacts.json with the files' real sha256."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli, synthetic_rows, write_jsonl
from tiny_runs import shared_tiny_run
from tuneforge.base.integrity import compare_predictions


@pytest.fixture()
def small_recipe(tmp_path, tiny_model) -> Path:
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(80, seed=1))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"""name: small
model: {tiny_model}
data: {{train: train.jsonl, max_length: 32, validation_fraction: 0.4}}
method: {{name: full}}
train: {{epochs: 1, batch_size: 16, learning_rate: 3.0e-3, warmup_ratio: 0.0, early_stopping: null}}
""", encoding="utf-8")
    return recipe


def rewrite_safetensors(path: Path, change) -> None:
    """Load a safetensors file, let ``change`` edit the dict of tensors, write it back."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def save_then(monkeypatch, change) -> None:
    """Make the base Method.save (used by `full`) break the file it just wrote, as a buggy saver would."""
    from tuneforge.core.methods.registry import Method

    original = Method.save

    def broken_save(self, model, run_dir):
        saved = original(self, model, run_dir)
        rewrite_safetensors(run_dir / "model" / "model.safetensors", change)
        return saved

    monkeypatch.setattr(Method, "save", broken_save)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- the comparison itself


def test_compare_predictions_each_check():
    reference = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 1, 0, 1])
    same = compare_predictions(reference, reference + 1e-6, labels, 1e-4, 0.01)
    assert same["passed"] and same["agreement"] == 1.0 and same["metric_drop"] == 0.0

    collapsed = compare_predictions(reference, np.tile([1.0, 0.0], (4, 1)), labels, None, 1.0)
    assert not collapsed["passed"] and collapsed["collapsed_to_one_class"]
    assert "collapse to one class" in collapsed["problems"][0]

    drifted = compare_predictions(reference, reference + 0.5, labels, 1e-4, 0.01)
    assert not drifted["passed"] and "max |Δlogit| 0.5" in drifted["problems"][0]

    worse = compare_predictions(reference, np.array([[2.0, 0], [2.0, 0], [2.0, 0], [0, 2.0]]), labels, None, 0.2)
    assert not worse["passed"] and worse["metric_drop"] == pytest.approx(0.25)
    assert any("export.max_metric_drop" in p for p in worse["problems"])

    wrong_shape = compare_predictions(reference, np.zeros((4, 3)), labels, 1e-4, 0.01)
    assert not wrong_shape["passed"] and "head" in wrong_shape["problems"][0]
    nan = compare_predictions(reference, np.full((4, 2), np.nan), labels, None, 0.01)
    assert not nan["passed"] and "NaN" in nan["problems"][0]


# ----------------------------------------------------------------------------- the save / merge gate


def test_intact_run_is_recorded_with_real_hashes(small_recipe, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(small_recipe), "--output", str(run))
    assert code == 0, err[-2000:]
    record = json.loads((run / "artifacts.json").read_text())["artifacts"]["run"]
    assert record["passed"] and record["probe"]["max_abs_logit_diff"] <= 1e-4
    assert record["probe"]["agreement"] == 1.0 and record["probe"]["metric_drop"] == 0.0
    assert 0 < record["parameters"]["trainable"] <= record["parameters"]["total"]
    files = {f["path"]: f for f in record["files"]}
    weights = run / "model" / "model.safetensors"
    assert files["model/model.safetensors"]["sha256"] == sha256(weights)
    assert files["model/model.safetensors"]["bytes"] == weights.stat().st_size
    assert not (run / "rescue").exists()


def test_doctor_checks_a_run_folder_against_its_record(small_recipe, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(small_recipe), "--output", str(run))
    assert code == 0, err[-2000:]
    code, out, _ = run_cli("doctor", str(run))
    assert code == 0, out
    assert "ok    saved model: read back with FullFineTuning.load (as tuneforge predict and eval load it)" in out
    assert "ok    saved model files: all" in out and "cpu matmul" not in out  # the run, not the machine
    config = run / "model" / "config.json"
    config.write_text(config.read_text().replace('"negative"', '"NEGATIVE"'))  # a hand-edited label name
    code, out, _ = run_cli("doctor", str(run))
    assert code == 1 and "changed since checked: model/config.json" in out
    (run / "artifacts.json").unlink()
    code, out, _ = run_cli("doctor", str(run))
    assert code == 1 and "artifacts.json is missing" in out


def test_gate_fires_when_the_head_is_not_saved(small_recipe, tmp_path, monkeypatch):
    save_then(monkeypatch, lambda tensors: [tensors.pop(k) for k in list(tensors) if k.startswith("classifier.")])
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(small_recipe), "--output", str(run))
    assert code == 1
    assert "the saved model does not answer as the trained model did" in err
    assert "classifier.weight (not in the reloaded model)" not in err  # transformers re-creates it...
    assert "classifier.weight (max |Δ|" in err  # ...at random, so its values differ: named in the message
    rescue = run / "rescue" / "in_memory_state.safetensors"
    assert str(rescue) in err and rescue.is_file()
    # the rescued weights are the trained ones: they restore the head the saved file lost
    from safetensors.torch import load_file

    rescued = load_file(str(rescue))
    assert "classifier.weight" in rescued and torch.isfinite(rescued["classifier.weight"]).all()
    record = json.loads((run / "artifacts.json").read_text())["artifacts"]["run"]
    assert not record["passed"] and record["rescue"] == str(rescue)
    assert json.loads((run / "run.json").read_text())["status"] == "failed"


def test_gate_fires_on_a_corrupted_tensor(small_recipe, tmp_path, monkeypatch):
    name = "bert.encoder.layer.1.attention.self.value.weight"

    def corrupt(tensors):
        tensors[name] = tensors[name] * -3.0

    save_then(monkeypatch, corrupt)
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(small_recipe), "--output", str(run))
    assert code == 1
    assert f"Weights that differ after reloading: {name} (max |Δ|" in err
    assert "max |Δlogit|" in err and (run / "rescue").is_dir()


def test_gate_fires_when_a_merge_changes_the_outputs(small_recipe, tmp_path, monkeypatch):
    from peft.tuners.lora import LoraModel

    original = LoraModel.merge_and_unload

    def bad_merge(self, *args, **kwargs):  # a merge that mis-scales one layer, as a wrong alpha / r would
        merged = original(self, *args, **kwargs)
        with torch.no_grad():
            merged.bert.encoder.layer[0].attention.self.value.weight.mul_(4.0)
        return merged

    monkeypatch.setattr(LoraModel, "merge_and_unload", bad_merge)
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(small_recipe), "--set", "method={name: lora, r: 4}", "--output", str(run))
    assert code == 1
    assert "the saved (merged) model's logits differ from the trained model's" in err
    assert f"the unmerged adapter is kept in {run / 'adapter'}" in err
    assert (run / "adapter" / "adapter_model.safetensors").is_file()


# ----------------------------------------------------------------------------- the export gate


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model) -> Path:
    return shared_tiny_run(tmp_path_factory, tiny_model)


def test_export_gate_records_an_intact_export(tiny_run, tmp_path):
    from tuneforge.apps.export import export_run

    out, report = export_run(tiny_run, "onnx", output=tmp_path / "onnx", measure=False)
    gate = report["integrity"]
    assert gate["passed"] and gate["max_abs_logit_diff"] <= 1e-3 and gate["metric"] == "accuracy"
    record = json.loads((out / "artifacts.json").read_text())["artifacts"]["export"]
    files = {f["path"]: f for f in record["files"]}
    assert files["model.onnx"]["sha256"] == sha256(out / "model.onnx")
    assert record["probe"]["reloaded_with"] == "export folder, onnx fp32"  # an ONNX Runtime session


def test_export_gate_fires_on_a_badly_quantized_layer(tiny_run, tmp_path, monkeypatch):
    """INT8 with a scale 1000x too large for the classifier: every weight rounds to 0, every row gets the
    bias's class. The gate must fail the export, say why, and the folder must be refused by serve."""
    import copy

    import tuneforge.apps.export.quantize as quantize
    from tuneforge.apps.export import export_run, load_classifier
    from tuneforge.base.integrity import IntegrityError

    def bad_quantize(model, plan=None):
        model = copy.deepcopy(model).eval()
        with torch.no_grad():
            weight = model.classifier.weight
            scale = 1000 * weight.abs().max() / 127  # the bug: a scale for the wrong tensor
            weight.copy_(torch.clamp(torch.round(weight / scale), -127, 127) * scale)
            model.classifier.bias.copy_(torch.tensor([0.5, -0.5]))
        return model

    monkeypatch.setattr(quantize, "quantize_torch", bad_quantize)
    # with the parity check relaxed, the integrity gate alone must stop the export
    with pytest.raises(IntegrityError) as failure:
        export_run(tiny_run, "torchscript", "int8", output=tmp_path / "ts-int8", measure=False, min_agreement=0.01)
    message = str(failure.value)
    assert "failed its integrity gate" in message and "collapse to one class" in message
    assert f"{tiny_run / 'model'} is unchanged" in message
    assert json.loads((tmp_path / "ts-int8" / "artifacts.json").read_text())["artifacts"]["export"]["passed"] is False
    with pytest.raises(Exception, match="failed its integrity gate"):  # serve and predict refuse it
        load_classifier(tmp_path / "ts-int8")
    # with the default parity check, both fail and the one error says both
    code, _, err = run_cli("export", str(tiny_run), "--format", "torchscript", "--quantize", "int8", "--output",
                           str(tmp_path / "ts-int8-b"), "--no-benchmark")
    assert code == 1 and "failed its parity check" in err and "The integrity gate also failed" in err
    assert "collapse to one class" in err
