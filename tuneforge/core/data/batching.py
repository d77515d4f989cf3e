"""Tokenize once, then batch with dynamic padding.

Training batches are length-grouped: indices are shuffled, cut into mega-batches, sorted by length
inside each, cut into batches, and the batches shuffled. Every example appears exactly once per
epoch, and little compute is spent on padding. Evaluation batches are sorted by length outright.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from tuneforge.core.data.splits import Split

# How many batches' worth of examples are sorted together: big enough to group lengths well,
# small enough that batches still mix examples from across the epoch.
MEGA_BATCH_FACTOR = 50


@dataclass
class EncodedSplit:
    """Token ids per example (unpadded) and label ids."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids in self.input_ids]


def encode_split(tokenizer, split: Split, max_length: int) -> EncodedSplit:
    """Tokenize a split once (truncated to ``max_length``, not padded)."""
    encoded = tokenizer(split.texts, split.text_pairs, truncation=True, max_length=max_length,
                        padding=False, return_attention_mask=False)
    return EncodedSplit(
        input_ids=encoded["input_ids"],
        token_type_ids=encoded.get("token_type_ids"),
        labels=list(split.labels),
    )


def length_grouped_batches(lengths: list[int], batch_size: int, generator: random.Random) -> list[list[int]]:
    """Shuffled batches of indices with similar lengths; each index exactly once."""
    indices = list(range(len(lengths)))
    generator.shuffle(indices)
    mega = batch_size * MEGA_BATCH_FACTOR
    batches: list[list[int]] = []
    for start in range(0, len(indices), mega):
        chunk = sorted(indices[start:start + mega], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    generator.shuffle(batches)
    return batches


def shuffled_batches(count: int, batch_size: int, generator: random.Random) -> list[list[int]]:
    """Plain shuffled batches (``train.group_by_length: false``)."""
    indices = list(range(count))
    generator.shuffle(indices)
    return [indices[i:i + batch_size] for i in range(0, count, batch_size)]


def sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Batches for evaluation: longest first (so a memory problem shows at once), no shuffling."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(encoded: EncodedSplit, indices: list[int], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Pad the examples at ``indices`` to the longest of them."""
    width = max(len(encoded.input_ids[i]) for i in indices)
    input_ids = torch.full((len(indices), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
    token_type_ids = torch.zeros((len(indices), width), dtype=torch.long) if encoded.token_type_ids else None
    for row, i in enumerate(indices):
        ids = encoded.input_ids[i]
        input_ids[row, :len(ids)] = torch.tensor(ids)
        attention_mask[row, :len(ids)] = 1
        if token_type_ids is not None:
            token_type_ids[row, :len(ids)] = torch.tensor(encoded.token_type_ids[i])
    batch = {"input_ids": input_ids, "attention_mask": attention_mask,
             "labels": torch.tensor([encoded.labels[i] for i in indices], dtype=torch.long)}
    if token_type_ids is not None:
        batch["token_type_ids"] = token_type_ids
    return batch


def iterate_batches(encoded: EncodedSplit, batches: list[list[int]], pad_token_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Yield padded tensors for each list of indices (a split with its own ``collate``, such as images, makes
    its batches itself)."""
    own_collate = getattr(encoded, "collate", None)
    for indices in batches:
        yield own_collate(indices) if own_collate is not None else collate(encoded, indices, pad_token_id)
