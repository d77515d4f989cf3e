"""The speed features are exact: the activation cache changes no number, batching drops no example."""

from __future__ import annotations

import json
import random

import pytest

from conftest import run_cli
from tuneforge.core.data.batching import length_grouped_batches, shuffled_batches


def step_losses(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return ([r["loss"] for r in lines if "loss" in r and "validation_accuracy" not in r],
            [r["validation_loss"] for r in lines if "validation_loss" in r])


@pytest.mark.parametrize("method", [["method.name=freeze", "method.unfreeze_top_layers=1"],
                                    ["method.name=freeze", "method.unfreeze_top_layers=0"],
                                    ["method.name=gradual", "train.epochs=3"]])
def test_activation_cache_gives_the_same_loss_curve(tmp_path, tiny_job, method):
    runs = {}
    for cached in (True, False):
        runs[cached] = tmp_path / f"run-{cached}"
        code, _, err = run_cli("train", str(tiny_job), "--output", str(runs[cached]), "--set=train.log_every_steps=1",
                               "--set=train.dropout=0.2", f"--set=train.activation_cache={str(cached).lower()}",
                               *[f"--set={m}" for m in method])
        assert code == 0, err
        assert ("activation cache:" in err) == cached, err
    with_cache, without = step_losses(runs[True]), step_losses(runs[False])
    assert len(with_cache[0]) > 20
    assert with_cache[0] == pytest.approx(without[0], abs=1e-5, rel=0)
    assert with_cache[1] == pytest.approx(without[1], abs=1e-5, rel=0)
    first, last = sum(with_cache[0][:5]) / 5, sum(with_cache[0][-5:]) / 5
    assert last < first, "the model must learn for the comparison to mean something"


def test_no_cache_when_every_layer_trains(tmp_path, tiny_job):
    code, _, err = run_cli("train", str(tiny_job), "--output", str(tmp_path / "run"), "--set=train.epochs=1")
    assert code == 0, err
    assert "activation cache" not in err


@pytest.mark.parametrize("batch_size", [1, 7, 32, 1000])
def test_length_grouped_batches_cover_every_example_once(batch_size):
    rng = random.Random(0)
    lengths = [rng.randint(1, 128) for _ in range(2_345)]
    for make in (lambda g: length_grouped_batches(lengths, batch_size, g),
                 lambda g: shuffled_batches(len(lengths), batch_size, g)):
        batches = make(random.Random(1))
        flat = [i for batch in batches for i in batch]
        assert sorted(flat) == list(range(len(lengths)))
        assert all(1 <= len(b) <= batch_size for b in batches)


def test_length_grouping_reduces_padding_and_still_shuffles():
    rng = random.Random(0)
    lengths = [rng.randint(1, 128) for _ in range(5_000)]

    def padded(batches):
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    grouped = length_grouped_batches(lengths, 32, random.Random(1))
    plain = shuffled_batches(len(lengths), 32, random.Random(1))
    assert padded(grouped) < 0.7 * padded(plain)
    assert grouped != length_grouped_batches(lengths, 32, random.Random(2))


def test_tokenization_is_cached_and_exact(tmp_path, tiny_model, monkeypatch):
    from transformers import AutoTokenizer

    from tuneforge.core.data import encode_cache
    from tuneforge.core.data.batching import encode_split
    from tuneforge.core.data.splits import Split

    from conftest import synthetic_rows

    rows = synthetic_rows(50, seed=4)
    split = Split(name="train", source=tmp_path / "x.jsonl", texts=[r["text"] for r in rows],
                  labels=[int(r["label"] == "positive") for r in rows], source_rows=list(range(50)),
                  text_pairs=[r["text"][::-1] for r in rows])
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    first = encode_cache.encode_split_cached(tokenizer, split, 16, tmp_path)
    assert len(list((tmp_path / "encoded").glob("*.npz"))) == 1

    calls = []
    monkeypatch.setattr(encode_cache, "encode_split", lambda *a: calls.append(a))
    second = encode_cache.encode_split_cached(tokenizer, split, 16, tmp_path)
    assert not calls, "a cache hit must not tokenize"
    reference = encode_split(tokenizer, split, 16)
    for encoded in (first, second):
        assert encoded.input_ids == reference.input_ids
        assert encoded.token_type_ids == reference.token_type_ids
        assert encoded.labels == reference.labels
    assert max(second.lengths) <= 16
    # another max_length is another entry
    monkeypatch.setattr(encode_cache, "encode_split", encode_split)
    encode_cache.encode_split_cached(tokenizer, split, 12, tmp_path)
    assert len(list((tmp_path / "encoded").glob("*.npz"))) == 2


def test_fused_adamw_steps_like_the_reference_kernel(tiny_model):
    """The optimizer runs torch's fused AdamW kernel on CPU (one pass over the weights, no temporary copy of
    them; bench/optimizer_step.py times it) and its steps are those of the reference for-loop AdamW over the
    same parameter groups (weight decay and learning rates per group unchanged)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from tuneforge.base.recipe import TrainConfig
    from tuneforge.core.engine.optim import build_optimizer

    config = TrainConfig(learning_rate=1e-3, head_learning_rate=1e-2, layer_lr_decay=0.5, weight_decay=0.1)
    models = [AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3).eval() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    fused = build_optimizer(models[0], models[0].named_parameters(), config)
    assert fused.defaults["fused"] is True
    reference = build_optimizer(models[1], models[1].named_parameters(), config)
    reference = torch.optim.AdamW(reference.param_groups, foreach=False)  # the same groups, plain kernel
    batch = {"input_ids": torch.randint(5, models[0].config.vocab_size, (4, 12)), "labels": torch.tensor([0, 1, 2, 1])}
    for _ in range(3):
        for model, optimizer in zip(models, (fused, reference)):
            model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, first), second in zip(models[0].named_parameters(), models[1].parameters()):
        assert torch.allclose(first, second, atol=1e-6), name
