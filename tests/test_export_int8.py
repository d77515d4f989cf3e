"""INT8 that keeps quality, judged fairly (docs/export.md, docs/reliability.md §1): per-channel INT8 weights,
the head and the layers a sensitivity pass finds sensitive kept in fp32, and a default gate on the rows where the
fp32 model is confident (plus the integrity gate's accuracy drop), with ``--min-agreement`` as the strict gate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tuneforge.apps.export.parity import compare_logits
from tuneforge.apps.export.quantize import head_layers, plan_quantization, quantize_torch

SENSITIVE = "bert.encoder.layer.1.output.dense"


def confident_and_hesitant_logits(rows: int = 200, hesitant: int = 40, seed: int = 0) -> np.ndarray:
    """Two-class logits: the first ``hesitant`` rows near 50/50, the rest confident (|margin| >= 4)."""
    rng = np.random.default_rng(seed)
    margin = np.concatenate([rng.uniform(-0.3, 0.3, hesitant), rng.choice([-1, 1], rows - hesitant) * rng.uniform(4, 6, rows - hesitant)])
    return np.stack([np.zeros(rows), margin], axis=1).astype(np.float32)


def test_int8_gate_forgives_flips_on_hesitant_rows_but_not_on_confident_ones():
    reference = confident_and_hesitant_logits()
    candidate = reference.copy()
    candidate[:3, 1] *= -1  # three near-50/50 rows flip: raw agreement 98.5%, below the strict 99%
    default = compare_logits(reference, candidate, None, quantized=True)
    assert default["agreement"] == pytest.approx(197 / 200) and default["confident"]["rows"] == 160
    assert default["rule"] == "confident" and default["confident"]["agreement"] == 1.0 and default["passed"]
    strict = compare_logits(reference, candidate, 0.99, quantized=True)  # --min-agreement: the strict gate
    assert strict["rule"] == "all rows" and not strict["passed"]
    assert not compare_logits(reference, candidate, None, quantized=False)["passed"]  # fp32 exports stay strict

    candidate[50, 1] *= -1  # one confident row of 160 flips: 99.4%, still within the 99% allowed
    assert compare_logits(reference, candidate, None, quantized=True)["passed"]
    candidate[60, 1] *= -1  # a second one: 158/160 = 98.75% < 99%
    flipped = compare_logits(reference, candidate, None, quantized=True)
    assert flipped["confident"]["disagreements"] == 2 and not flipped["passed"]

    # a model sure of no row: with labelled rows the accuracy drop (the integrity gate) alone judges
    hesitant = confident_and_hesitant_logits(rows=100, hesitant=100)
    shaken = hesitant.copy()
    shaken[:5, 1] *= -1
    judged = compare_logits(hesitant, shaken, None, quantized=True, labelled=True)
    assert judged["rule"] == "accuracy" and judged["passed"] and judged["agreement"] == 0.95
    assert not compare_logits(hesitant, shaken, None, quantized=True, labelled=False)["passed"]


@pytest.fixture()
def classifier_with_a_sensitive_layer(tiny_model):
    """The tiny BERT with one column of ``SENSITIVE``'s weight 200x larger: per-channel INT8 gives every output
    channel a scale set by that column, so the layer's other weights round to zero."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=2).eval()
    with torch.no_grad():
        weight = model.get_submodule(SENSITIVE).weight
        weight[:, 0] = 200 * weight.abs().max()
    return model


def test_sensitivity_pass_keeps_the_head_and_the_sensitive_layer_in_fp32(classifier_with_a_sensitive_layer):
    model = classifier_with_a_sensitive_layer
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 30, (16, 12), generator=generator)
    batches = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    plan = plan_quantization(model, batches)

    assert set(head_layers(model)) == {"bert.pooler.dense", "classifier"}
    assert plan.kept["classifier"] == "classification head" and plan.kept["bert.pooler.dense"] == "classification head"
    assert SENSITIVE in plan.kept and plan.kept[SENSITIVE].startswith("sensitive")
    assert max(plan.sensitivity, key=plan.sensitivity.get) == SENSITIVE
    assert len(plan.kept) == 3 and len(plan.quantized) == len(plan.sensitivity) - 1  # only the outlier was kept
    assert plan.as_dict()["sensitivity"]["rows"] == 16

    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    quantized = quantize_torch(model, plan)
    modules = dict(quantized.named_modules())
    assert all(type(modules[name]) is torch.nn.Linear for name in (SENSITIVE, "classifier", "bert.pooler.dense"))
    assert all(isinstance(modules[name], DynamicLinear) for name in plan.quantized)
    assert quantized.get_submodule(plan.quantized[0]).weight().qscheme() == torch.per_channel_affine
    # keeping the sensitive layer is what preserves the logits
    with torch.no_grad():
        reference = model(**batches[0]).logits
        kept = (quantized(**batches[0]).logits - reference).abs().mean()
        everything = quantize_torch(model, type(plan)(quantized=plan.quantized + [SENSITIVE], kept={}))
        lost = (everything(**batches[0]).logits - reference).abs().mean()
    assert kept < lost / 3
