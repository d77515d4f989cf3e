"""Prefix tuning: PEFT's version fails on sequence classifiers with this transformers; ours works and learns."""

from __future__ import annotations

import pytest
import torch

from conftest import synthetic_rows
from tuneforge.core.methods import build_method, method_spec


def tiny_classifier(folder, attn: str = "sdpa"):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2, attn_implementation=attn)


def prefix_method(**keys):
    return build_method(method_spec("prefix").config_class(name="prefix", **keys))


def batch_of(folder, texts):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")


def test_peft_prefix_tuning_fails_on_a_bert_classifier(tiny_model):
    """Why tuneforge has its own prefix tuning. When this starts passing through PEFT, this test fails: then
    PEFT's path may be worth using again."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    model = get_peft_model(tiny_classifier(tiny_model), PrefixTuningConfig(task_type=TaskType.SEQ_CLS,
                                                                           num_virtual_tokens=4))
    with pytest.raises(ValueError, match="does not support past key values"):
        model(**batch_of(tiny_model, ["the film was good"]))


def test_prefix_is_consistent_across_padding_and_attention_kernels(tiny_model):
    texts = ["the film was good and really lovely", "bad"]
    logits = {}
    for attn in ("sdpa", "eager"):
        model = prefix_method(num_virtual_tokens=5).prepare(tiny_classifier(tiny_model, attn)).eval()
        with torch.no_grad():
            padded = model(**batch_of(tiny_model, texts)).logits
            alone = model(**batch_of(tiny_model, texts[1:])).logits
        # the short text gives the same logits padded in a batch as on its own: padding stays masked
        assert torch.allclose(padded[1], alone[0], atol=1e-5)
        logits[attn] = padded
    assert torch.allclose(logits["sdpa"], logits["eager"], atol=1e-5)


def test_prefix_changes_the_model_and_the_body_stays_frozen(tiny_model):
    base = tiny_classifier(tiny_model).eval()
    batch = batch_of(tiny_model, ["the film was good", "awful plot"])
    with torch.no_grad():
        before = base(**batch).logits
    model = prefix_method(num_virtual_tokens=4).prepare(base).eval()
    with torch.no_grad():
        after = model(**batch).logits
    assert not torch.allclose(before, after)  # the prefixes take part in attention
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "tf_prefix.prefix" in trainable
    assert all(n.startswith(("tf_prefix.", "classifier.", "bert.pooler.")) for n in trainable), trainable
    assert model.tf_prefix.prefix.shape == (3, 2, 4, 32)  # layers, key/value, tokens, width


def test_gradients_reach_the_prefixes_and_move_the_output(tiny_model):
    """Train the prefixes only (body and head frozen): they alone must pull the logits where the loss wants.

    (A random tiny body cannot learn the synthetic task through prefixes, since attention to the sentiment
    word needs trained queries; that prefix tuning learns a real task is tested on MiniLM below.)"""
    model = prefix_method(num_virtual_tokens=8, init="random").prepare(tiny_classifier(tiny_model))
    torch.nn.init.normal_(model.classifier.weight, std=1.0)  # a head that reads the pooled output clearly
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("tf_prefix."))
    rows = synthetic_rows(32, seed=3)
    batch = batch_of(tiny_model, [r["text"] for r in rows])
    target = torch.ones(len(rows), dtype=torch.long)  # reachable through the prefixes alone: one class for all
    optimizer = torch.optim.AdamW([model.tf_prefix.prefix], lr=1e-1)
    model.eval()
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(**batch).logits, target)
        loss.backward()
        assert model.tf_prefix.prefix.grad.abs().sum() > 0
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses[::10]


@pytest.mark.integration
def test_prefix_tuning_learns_sms_spam_on_minilm(tmp_path):
    """Our prefix tuning on the real MiniLM, body frozen: well above chance (0.5 on these balanced slices) after
    a short run on the bundled SMS spam data."""
    import json

    from conftest import BUNDLED_DATA, run_cli, write_jsonl

    rows = [json.loads(line) for line in (BUNDLED_DATA / "sms_spam/train.jsonl").read_text(encoding="utf-8").splitlines()]
    spam, ham = [row for row in rows if row["label"] == "spam"], [row for row in rows if row["label"] == "ham"]
    # Interleaved so that every batch holds both labels; train and validation rows do not overlap.
    write_jsonl(tmp_path / "train.jsonl", [row for pair in zip(spam[:200], ham[:200]) for row in pair])
    write_jsonl(tmp_path / "dev.jsonl", [row for pair in zip(spam[200:300], ham[200:300]) for row in pair])
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("""name: prefix-sms-spam
model: minilm
data: {train: train.jsonl, validation: dev.jsonl, max_length: 48}
method: {name: prefix, num_virtual_tokens: 10}
train: {epochs: 2, batch_size: 16, learning_rate: 1.0e-2, early_stopping: null}
""", encoding="utf-8")
    code, _, err = run_cli("train", str(recipe), "--output", str(tmp_path / "run"))
    assert code == 0, err[-2000:]
    status = json.loads((tmp_path / "run/run.json").read_text())
    assert status["trainable_share"] < 0.01
    assert status["validation"]["accuracy"] > 0.75, status["validation"]


def test_projection_mlp_trains_and_saves_only_the_prefixes(tiny_model):
    method = prefix_method(num_virtual_tokens=4, projection=True, projection_hidden=16, init="random")
    model = method.prepare(tiny_classifier(tiny_model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("tf_prefix.mlp.") for n in trainable)
    state = method.adapter_state(model)
    assert "tf_prefix.prefix" in state and not any(n.startswith("tf_prefix.mlp") for n in state)
    assert state["tf_prefix.prefix"].shape == (3, 2, 4, 32)


def test_prefix_works_on_a_decoder(tmp_path):
    """Llama-style (causal, grouped key/value heads): prefixes are visible to every position, causality kept."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=0)
    torch.manual_seed(0)
    model = prefix_method(num_virtual_tokens=3).prepare(LlamaForSequenceClassification(config)).eval()
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 0, 0]])
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
        alone = model(input_ids=ids[1:, :2]).logits
        full_alone = model(input_ids=ids[:1]).logits
    assert torch.allclose(padded[1], alone[0], atol=1e-5)
    assert torch.allclose(padded[0], full_alone[0], atol=1e-5)
    assert model.tf_prefix.prefix.shape == (2, 2, 3, 16)  # 2 key/value heads x 8 dims


def test_unsupported_architecture_says_so():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from tuneforge.base.errors import UserError

    model = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=32, n_layers=1, n_heads=2,
                                                                 hidden_dim=64))
    with pytest.raises(UserError, match="not supported yet"):
        prefix_method().prepare(model)
