"""Bottleneck adapters (ours) and the PEFT methods' recipe keys."""

from __future__ import annotations

import pytest
import torch

from tuneforge.base.errors import UserError
from tuneforge.core.methods import build_method, method_spec


def tiny_classifier(folder):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)


def method(name, **keys):
    return build_method(method_spec(name).config_class(name=name, **keys))


def batch_of(folder, texts):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")


def test_adapters_start_as_the_identity_and_only_they_and_the_head_train(tiny_model):
    batch = batch_of(tiny_model, ["the film was good", "awful"])
    base = tiny_classifier(tiny_model).eval()
    with torch.no_grad():
        before = base(**batch).logits
    model = method("adapter", bottleneck=8).prepare(base).eval()
    with torch.no_grad():
        after = model(**batch).logits
    assert torch.equal(before, after)  # up projection starts at zero: training starts from the pretrained model
    adapters = [m for n, m in model.named_modules() if n.endswith("tf_adapter")]
    assert len(adapters) == 2 * 3  # after attention and after the FFN of each of 3 blocks (Houlsby)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".tf_adapter." in n or "LayerNorm" in n or n.startswith(("classifier", "bert.pooler")) for n in trainable)
    assert not any(n.startswith("bert.encoder.") and n.endswith(("query.weight", "dense.weight"))
                   and ".tf_adapter." not in n for n in trainable)  # the body's weights stay frozen
    # a trained adapter changes the output: the hook is wired in
    with torch.no_grad():
        hidden = model.bert(**batch).last_hidden_state
        adapters[0].down.bias.fill_(1.0)
        adapters[0].up.weight.normal_()  # (a constant shift would vanish in the LayerNorm)
        assert not torch.allclose(model.bert(**batch).last_hidden_state, hidden)


@pytest.mark.parametrize("placement, count", [("both", 6), ("ffn", 3), ("attention", 3)])
def test_placement(tiny_model, placement, count):
    model = method("adapter", placement=placement, bottleneck=4).prepare(tiny_classifier(tiny_model))
    names = [n for n, _ in model.named_modules() if n.endswith("tf_adapter")]
    assert len(names) == count
    if placement == "ffn":  # Pfeiffer: after the feed-forward output only
        assert all(".attention." not in n for n in names)


def test_layer_norms_can_stay_frozen(tiny_model):
    model = method("adapter", train_layer_norms=False).prepare(tiny_classifier(tiny_model))
    assert not any(p.requires_grad for n, p in model.named_parameters() if "LayerNorm" in n)


def test_adapter_on_a_decoder():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=2, pad_token_id=0)
    model = method("adapter", bottleneck=4).prepare(LlamaForSequenceClassification(config))
    assert len([n for n, _ in model.named_modules() if n.endswith("tf_adapter")]) == 4
    logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    logits.sum().backward()
    assert model.model.layers[0].mlp.down_proj.tf_adapter.up.weight.grad is not None


def test_unknown_architecture_is_not_supported_yet():
    from torch import nn

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.ModuleList([nn.Linear(4, 4)])

    with pytest.raises(UserError, match="not supported yet"):
        method("adapter").prepare(Odd())


@pytest.mark.parametrize("name, keys, message", [
    ("prompt", {"init": "text"}, "init_text"),
    ("adalora", {"init_r": 4, "target_r": 8}, "target_r"),
    ("adalora", {"tinit_fraction": 0.6, "tfinal_fraction": 0.5}, "below 1"),
    ("prefix", {"projection": True, "init": "vocab"}, "projection"),
])
def test_method_keys_are_checked(name, keys, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        method_spec(name).config_class(name=name, **keys)


def test_prompt_tuning_from_text_starts_from_the_words(tiny_model):
    model = method("prompt", num_virtual_tokens=3, init="text", init_text="good bad great").prepare(
        tiny_classifier(tiny_model))
    embeddings = model.word_embeddings.weight
    from transformers import AutoTokenizer

    # PEFT tokenizes the text with its special tokens: with BERT the first virtual token starts as [CLS], the
    # position the pooler reads
    ids = AutoTokenizer.from_pretrained(tiny_model)("good bad great")["input_ids"][:3]
    prompt = model.prompt_encoder["default"].embedding.weight
    assert torch.allclose(prompt, embeddings[ids])


def test_adalora_gets_the_real_schedule_from_the_loop(tiny_model):
    adalora = method("adalora", init_r=4, target_r=2)
    model = adalora.prepare(tiny_classifier(tiny_model))
    batch = batch_of(tiny_model, ["the film was good", "awful"])
    model(**batch).logits.sum().backward()
    adalora.on_optimizer_step(model, 1, total_steps=50)
    config = model.base_model.peft_config["default"]
    assert (config.total_step, config.tinit, config.tfinal) == (50, 5, 10)


@pytest.mark.parametrize("name, keys", [("adapter", {}), ("prefix", {}),
                                        ("prefix", {"projection": True, "init": "random"}), ("prompt", {}),
                                        ("ptuning", {}), ("lora", {}), ("dora", {}), ("ia3", {}), ("adalora", {})])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, name, keys):
    """Our hooks (adapters, prefixes) and PEFT's wrappers survive the recomputation of checkpointed blocks."""
    model = method(name, **keys).prepare(tiny_classifier(tiny_model)).train()
    batch = batch_of(tiny_model, ["the film was good", "bad"])
    gradients = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        torch.manual_seed(1)  # the same dropout masks
        model(**batch).logits.sum().backward()
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert gradients[0].abs().sum() > 0
    assert torch.allclose(gradients[0], gradients[1], atol=1e-6)
