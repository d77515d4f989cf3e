"""Methods: which weights train, when, and what is saved."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli
from tuneforge.core.anatomy import describe
from tuneforge.base.recipe import TrainConfig
from tuneforge.core.methods.freeze import Freeze, FreezeConfig
from tuneforge.core.methods.gradual import GradualConfig, GradualUnfreezing
from tuneforge.core.engine.optim import build_optimizer


def load_classifier(folder, num_labels=2):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels)


def train_tiny(tmp_path, tiny_job, *overrides):
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(tiny_job), "--output", str(run), *[f"--set={o}" for o in overrides])
    assert code == 0, err
    return run


def body_weights(folder):
    """Encoder weights by name without the task model's prefix (a bare BertModel saves none)."""
    return {k.removeprefix("bert."): v for k, v in load_file(folder / "model.safetensors").items()}


def test_anatomy_of_bert(tiny_model):
    anatomy = describe(load_classifier(tiny_model))
    assert anatomy.num_layers == 3
    assert all(name.startswith("bert.encoder.layer.0.") for name in anatomy.layers[0])
    assert any("word_embeddings" in name for name in anatomy.embeddings)
    assert set(anatomy.head) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight",
                                 "classifier.bias"}


def test_freeze_leaves_the_body_bit_identical(tmp_path, tiny_job, tiny_model):
    run = train_tiny(tmp_path, tiny_job, "method.name=freeze", "method.unfreeze_top_layers=1")
    before, after = body_weights(tiny_model), body_weights(run / "model")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen_prefixes = ("embeddings.", "encoder.layer.0.", "encoder.layer.1.")
    assert not {k for k in changed if k.startswith(frozen_prefixes)}
    assert any(k.startswith("encoder.layer.2.") for k in changed), "the unfrozen top layer must train"
    status = json.loads((run / "run.json").read_text())
    assert 0 < status["trainable_share"] < 0.6


def test_gradual_unfreezes_on_schedule(tiny_model):
    model = load_classifier(tiny_model)
    method = GradualUnfreezing(GradualConfig(unfreeze_every=2))
    model = method.prepare(model)
    anatomy = describe(model)

    def trainable_layers():
        return [i for i, names in enumerate(anatomy.layers)
                if all(dict(model.named_parameters())[n].requires_grad for n in names)]

    schedule = []
    for epoch in range(10):
        method.on_epoch_start(model, epoch)
        embeddings = all(dict(model.named_parameters())[n].requires_grad for n in anatomy.embeddings)
        schedule.append((trainable_layers(), embeddings))
    assert schedule[:2] == [([], False)] * 2
    assert schedule[2:4] == [([2], False)] * 2
    assert schedule[4:6] == [([1, 2], False)] * 2
    assert schedule[6:8] == [([0, 1, 2], False)] * 2
    assert schedule[8:] == [([0, 1, 2], True)] * 2
    head = dict(model.named_parameters())["classifier.weight"]
    assert head.requires_grad


def test_gradual_training_keeps_still_frozen_layers_identical(tmp_path, tiny_job, tiny_model):
    run = train_tiny(tmp_path, tiny_job, "method.name=gradual", "train.epochs=2")
    before, after = body_weights(tiny_model), body_weights(run / "model")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert not {k for k in changed if k.startswith(("embeddings.", "encoder.layer.0.", "encoder.layer.1."))}
    assert any(k.startswith("encoder.layer.2.") for k in changed)


def test_lora_merged_logits_equal_unmerged(tmp_path, tiny_job, tiny_model):
    from peft import PeftModel

    run = train_tiny(tmp_path, tiny_job, "method.name=lora", "method.r=4", "train.learning_rate=1e-2")
    assert json.loads((run / "save_check.json").read_text())["passed"]
    merged = load_classifier(run / "model").eval()
    labels = json.loads((run / "labels.json").read_text())
    base = load_classifier(tiny_model, num_labels=len(labels))
    unmerged = PeftModel.from_pretrained(base, run / "adapter").eval()
    batch = {"input_ids": torch.randint(5, 30, (6, 12)), "attention_mask": torch.ones(6, 12, dtype=torch.long)}
    with torch.no_grad():
        torch.testing.assert_close(merged(**batch).logits, unmerged(**batch).logits, atol=1e-4, rtol=0)
    # the adapter changed something: merged weights differ from the base's
    assert not torch.equal(body_weights(run / "model")["encoder.layer.0.attention.self.query.weight"],
                           body_weights(tiny_model)["encoder.layer.0.attention.self.query.weight"])


def test_discriminative_and_layerwise_learning_rates(tiny_model):
    model = Freeze(FreezeConfig(unfreeze_top_layers=3)).prepare(load_classifier(tiny_model))
    config = TrainConfig(learning_rate=1e-4, head_learning_rate=1e-3, layer_lr_decay=0.5, weight_decay=0.1)
    optimizer = build_optimizer(model, model.named_parameters(), config)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    parameters = dict(model.named_parameters())
    assert lr_of[id(parameters["classifier.weight"])] == (1e-3, 0.1)
    assert lr_of[id(parameters["classifier.bias"])] == (1e-3, 0.0)
    assert lr_of[id(parameters["bert.encoder.layer.2.attention.self.query.weight"])][0] == pytest.approx(1e-4)
    assert lr_of[id(parameters["bert.encoder.layer.0.attention.self.query.weight"])][0] == pytest.approx(2.5e-5)
    assert lr_of[id(parameters["bert.encoder.layer.0.attention.output.LayerNorm.weight"])][1] == 0.0
    assert lr_of[id(parameters["bert.embeddings.word_embeddings.weight"])][0] == pytest.approx(1.25e-5)
