"""Knowledge distillation: the loss is the formula, a shrunk student keeps the chosen layers, the teacher's
logits are computed once per run (and reused by the next), and a teacher with other labels is refused up front."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import run_cli, synthetic_rows, write_jsonl
from tuneforge.core.engine import distill
from tuneforge.core.engine.distill import Distiller, distillation_loss, shrink_student


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("alpha,temperature", [(0.5, 2.0), (0.9, 4.0), (0.0, 1.0)])
def test_distillation_loss_equals_the_formula(alpha, temperature):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(6, 3)) * 3, rng.normal(size=(6, 3)) * 3
    labels = rng.integers(0, 3, size=6)
    cross_entropy = float(np.mean(-np.log(_softmax(student)[np.arange(6), labels])))
    p_teacher, p_student = _softmax(teacher / temperature), _softmax(student / temperature)
    kl = float(np.mean(np.sum(p_teacher * (np.log(p_teacher) - np.log(p_student)), axis=1)))
    expected = (1 - alpha) * cross_entropy + alpha * temperature ** 2 * kl

    student_t = torch.tensor(student, dtype=torch.float64)
    hard = torch.nn.functional.cross_entropy(student_t, torch.tensor(labels))
    got = distillation_loss(student_t, torch.tensor(teacher, dtype=torch.float64), hard, alpha, temperature)
    assert float(got) == pytest.approx(expected, rel=1e-9)

    # the Distiller picks the teacher rows of the batch's examples by their train-split indices
    table = np.zeros((10, 3), dtype=np.float64)
    table[[7, 2, 5, 0, 9, 4]] = teacher
    distiller = Distiller(table, alpha, temperature, torch.device("cpu"))
    assert float(distiller.loss(student_t, hard, [7, 2, 5, 0, 9, 4])) == pytest.approx(expected, rel=1e-9)


def test_shrunk_student_keeps_every_other_layer_and_reloads(tiny_model, tmp_path):
    from transformers import AutoModelForSequenceClassification

    full = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2)
    originals = [layer.output.dense.weight.detach().clone() for layer in full.bert.encoder.layer]
    student = shrink_student(full, "every_other")
    assert student.config.num_hidden_layers == 2 and len(student.bert.encoder.layer) == 2
    assert torch.equal(student.bert.encoder.layer[0].output.dense.weight, originals[0])
    assert torch.equal(student.bert.encoder.layer[1].output.dense.weight, originals[2])
    student.eval().save_pretrained(tmp_path / "student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    ids = torch.tensor([[2, 5, 9, 3]])
    with torch.no_grad():
        assert torch.allclose(student(input_ids=ids).logits, reloaded(input_ids=ids).logits, atol=1e-6)


def _student_recipe(tmp_path, tiny_model, teacher, labels=("negative", "positive"), extra: str = "") -> str:
    write_jsonl(tmp_path / "s_train.jsonl", synthetic_rows(240, seed=3, labels=labels))
    write_jsonl(tmp_path / "s_test.jsonl", synthetic_rows(80, seed=4, labels=labels))
    recipe = tmp_path / "student.yaml"
    recipe.write_text(f"""name: tiny-student
model: {tiny_model}
data: {{train: s_train.jsonl, test: s_test.jsonl, max_length: 32}}
method: {{name: full}}
train: {{epochs: 6, batch_size: 16, learning_rate: 3.0e-3, warmup_ratio: 0.0, early_stopping: null, num_threads: 1}}
distill: {{teacher: {teacher}, alpha: 0.5, temperature: 2.0, student_layers: every_other{extra}}}
""", encoding="utf-8")
    return str(recipe)


def test_distilled_student_trains_with_teacher_logits_computed_once(tmp_path, tiny_job, tiny_model, monkeypatch):
    teacher_dir = tmp_path / "teacher"
    code, _, err = run_cli("train", str(tiny_job), "--output", str(teacher_dir), "--set", "train.num_threads=1")
    assert code == 0, err

    calls = []
    original = distill.teacher_logits
    monkeypatch.setattr(distill, "teacher_logits", lambda *a, **k: calls.append(a[1].name) or original(*a, **k))
    recipe = _student_recipe(tmp_path, tiny_model, teacher_dir)
    code, _, err = run_cli("train", recipe, "--output", str(tmp_path / "student"))
    assert code == 0, err
    assert sorted(calls) == ["train", "validation"]  # once per split for the whole run, not once per epoch
    record = json.loads((tmp_path / "student" / "distill.json").read_text())
    assert record["teacher_validation_accuracy"] > 0.8  # a teacher worth distilling from
    config = json.loads((tmp_path / "student" / "model" / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    test = json.loads((tmp_path / "student" / "eval" / "test" / "metrics.json").read_text())
    assert test["accuracy"] > 0.75

    # the next run on the same data reads the teacher's logits from the cache
    code, _, err = run_cli("train", recipe, "--output", str(tmp_path / "student-2"), "--set", "train.epochs=1")
    assert code == 0, err
    assert sorted(calls) == ["train", "validation"] and "read from the cache" in err


def test_teacher_with_other_labels_is_refused_before_training(tmp_path, tiny_job, tiny_model):
    teacher_dir = tmp_path / "teacher"
    code, _, err = run_cli("train", str(tiny_job), "--output", str(teacher_dir), "--set", "train.epochs=1",
                           "--set", "train.num_threads=1")
    assert code == 0, err
    recipe = _student_recipe(tmp_path, tiny_model, teacher_dir, labels=("bad", "good"))
    code, _, err = run_cli("train", recipe, "--output", str(tmp_path / "student"))
    assert code == 1 and "distill.teacher: its labels differ" in err
    assert not (tmp_path / "student").exists()

    recipe = _student_recipe(tmp_path, tiny_model, teacher_dir)
    code, _, err = run_cli("validate", recipe, "--set", "distill.student_layers=[0, 5]")
    assert code == 1 and "has layers 0..2; 5 does not exist" in err
