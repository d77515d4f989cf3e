"""Batched, gradient-free forward passes over encoded examples (shared by the loop, eval and predict)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from tuneforge.core.data.batching import EncodedSplit, iterate_batches, sorted_batches


@torch.no_grad()
def predict_probabilities(model: nn.Module, encoded: EncodedSplit, batch_size: int, pad_token_id: int,
                          device: torch.device, loss_fn: nn.Module | None = None,
                          autocast_dtype: torch.dtype | None = None,
                          before_batch: Callable[[list[int]], None] | None = None,
                          activation: str = "softmax", temperature: float = 1.0) -> tuple[np.ndarray, float | None]:
    """Softmax probabilities in the original order, and the mean loss if ``loss_fn`` is given.

    ``activation="sigmoid"``: one independent probability per label (task multilabel); ``"logits"``: the raw
    logits (calibration fits its temperature on them). ``temperature``: softmax of ``logits / temperature`` (a
    run's calibration, :mod:`tuneforge.core.evaluate.calibration`; 1.0 leaves the softmax as it is).

    ``before_batch(indices)`` is called before each forward pass (the activation cache selects rows with it).
    """
    was_training = model.training
    model.eval()
    probabilities = np.zeros((len(encoded), 0), dtype=np.float32)
    chunks: list[tuple[list[int], np.ndarray]] = []
    total_loss, total_count = 0.0, 0
    for indices, batch in zip(sorted_batches(encoded.lengths, batch_size),
                              iterate_batches(encoded, sorted_batches(encoded.lengths, batch_size), pad_token_id)):
        labels = batch.pop("labels").to(device)
        inputs = {key: value.to(device) for key, value in batch.items()}
        if before_batch is not None:
            before_batch(indices)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(**inputs).logits.float()
        if loss_fn is not None:
            total_loss += float(loss_fn(logits, labels)) * len(indices)
            total_count += len(indices)
        scores = (torch.sigmoid(logits) if activation == "sigmoid" else logits if activation == "logits"
                  else torch.softmax(logits / temperature, dim=-1))
        chunks.append((indices, scores.cpu().numpy()))
    if chunks:
        probabilities = np.zeros((len(encoded), chunks[0][1].shape[1]), dtype=np.float32)
        for indices, values in chunks:
            probabilities[indices] = values
    model.train(was_training)
    return probabilities, (total_loss / total_count if total_count else None)
