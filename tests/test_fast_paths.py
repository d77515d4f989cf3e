"""The fast paths tuneforge relies on are exact (docs/speed.md): SDPA attention (transformers' default, which
tuneforge keeps) gives the eager attention's logits, and a batch padded only to its longest row (dynamic
padding, length-grouped batches) gives the loss, logits and gradients of the same rows padded to max_length."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import synthetic_rows

from tuneforge.core.data.batching import EncodedSplit, collate

MAX_LENGTH = 48


def tiny_classifier(folder, implementation: str):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # the same head weights for every implementation
    return AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2,
                                                              attn_implementation=implementation).eval()


@pytest.fixture(scope="module")
def batch(tiny_model) -> dict[str, torch.Tensor]:
    """16 rows of different lengths padded to the longest, with labels."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    rows = synthetic_rows(16, seed=5)
    encoded = tokenizer([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH, padding=False,
                        return_attention_mask=False)
    split = EncodedSplit(encoded["input_ids"], encoded.get("token_type_ids"), [int(r["label"] == "positive")
                                                                               for r in rows])
    assert len(set(split.lengths)) > 3
    return collate(split, list(range(len(rows))), tokenizer.pad_token_id)


def forward(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def test_tuneforge_loads_classifiers_with_sdpa_attention(tiny_job):
    from tuneforge.core.recipe import load_recipe
    from tuneforge.core.tasks.classification import load_classifier

    _, model = load_classifier(load_recipe(tiny_job), ["negative", "positive"])
    assert model.config._attn_implementation == "sdpa"


def test_sdpa_attention_gives_the_eager_logits_in_fp32(tiny_model, batch):
    with torch.inference_mode():
        sdpa = forward(tiny_classifier(tiny_model, "sdpa"), batch)
        eager = forward(tiny_classifier(tiny_model, "eager"), batch)
    assert (sdpa - eager).abs().max().item() < 1e-5


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_padding_to_the_longest_row_gives_the_loss_and_gradients_of_padding_to_max_length(tiny_model, batch,
                                                                                         implementation):
    model = tiny_classifier(tiny_model, implementation)
    extra = MAX_LENGTH - batch["input_ids"].shape[1]
    assert extra > 0
    padded = {k: (nn.functional.pad(v, (0, extra)) if k != "labels" else v) for k, v in batch.items()}
    results = []
    for inputs in (batch, padded):
        model.zero_grad()
        loss = nn.functional.cross_entropy(forward(model, inputs), inputs["labels"])
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (short_loss, short_grads), (long_loss, long_grads) = results
    assert abs(short_loss - long_loss) < 1e-6
    # position embeddings of the padding positions get no gradient; every gradient the short batch has matches
    assert max((short_grads[n] - long_grads[n]).abs().max().item() for n in short_grads) < 1e-5
