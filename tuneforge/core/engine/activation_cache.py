"""The frozen-prefix activation cache.

When the embeddings and the bottom K blocks stay frozen for the whole run (``freeze``; ``gradual``
for the blocks that have not thawed by the last epoch), their output for each example never
changes. We compute it once — one forward pass through the bottom K blocks — and for every training
step afterwards the embeddings module returns the cached hidden states of the batch's examples and
the frozen blocks pass them through untouched. Only the top blocks and the head run.

This is exact, not an approximation: frozen blocks run in eval mode (no dropout, see
:func:`tuneforge.core.anatomy.frozen_blocks_to_eval`), and the hidden states at real (non-padding)
positions do not depend on how the batch was padded. Padding positions get zeros; the attention
mask hides them from every later block.

It works on any model whose forward is "embeddings module -> stack of blocks -> head" (BERT,
RoBERTa, DistilBERT, Llama-style decoders ...): it swaps module ``forward`` methods and never
calls a block with architecture-specific arguments. Large caches live in a memory-mapped file.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tuneforge.core.anatomy import describe
from tuneforge.core.data.batching import EncodedSplit, iterate_batches, sorted_batches

# Above this many bytes the cached activations go to a memory-mapped file instead of RAM.
IN_MEMORY_LIMIT_BYTES = 1 << 30


class FrozenPrefixCache:
    """Hidden states after the bottom ``depth`` blocks, one row per token, for one encoded split."""

    def __init__(self, values: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, returns_tuple: bool) -> None:
        self.values = values
        self.offsets = offsets
        self.lengths = lengths
        self.returns_tuple = returns_tuple

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    def batch(self, indices: list[int], width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Hidden states of the examples at ``indices``, zero-padded to ``width`` tokens."""
        hidden = np.zeros((len(indices), width, self.values.shape[1]), dtype=np.float32)
        for row, index in enumerate(indices):
            start, length = self.offsets[index], self.lengths[index]
            hidden[row, :length] = self.values[start:start + length]
        return torch.from_numpy(hidden).to(device=device, dtype=dtype)


@torch.no_grad()
def build_cache(model: nn.Module, depth: int, encoded: EncodedSplit, batch_size: int, pad_token_id: int,
                device: torch.device, folder: Path | None = None, name: str = "train") -> FrozenPrefixCache:
    """Run the embeddings and bottom ``depth`` blocks once over ``encoded`` and keep their output."""
    anatomy = describe(model)
    if not 1 <= depth <= anatomy.num_layers:
        raise ValueError(f"cache depth {depth} outside 1..{anatomy.num_layers}")
    lengths = np.array(encoded.lengths, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    hidden_size = None
    values: np.ndarray | None = None
    captured: dict[str, object] = {}

    def capture(module, args, output):
        captured["output"] = output

    last_frozen = model.get_submodule(anatomy.layer_modules[depth - 1])
    skipped = [model.get_submodule(path) for path in anatomy.layer_modules[depth:]]
    was_training = model.training
    model.eval()
    handle = last_frozen.register_forward_hook(capture)
    try:
        with _passthrough(skipped, returns_tuple=None):
            for indices in sorted_batches(encoded.lengths, batch_size):
                batch = next(iterate_batches(encoded, [indices], pad_token_id))
                batch.pop("labels")
                model(**{k: v.to(device) for k, v in batch.items()})
                output = captured["output"]
                returns_tuple = isinstance(output, tuple)
                hidden = (output[0] if returns_tuple else output).float().cpu().numpy()
                if values is None:
                    hidden_size = hidden.shape[-1]
                    values = _allocate(int(lengths.sum()), hidden_size, folder, name)
                for row, index in enumerate(indices):
                    start, length = offsets[index], lengths[index]
                    values[start:start + length] = hidden[row, :length]
    finally:
        handle.remove()
        model.train(was_training)
    return FrozenPrefixCache(values, offsets, lengths, returns_tuple)


def _allocate(rows: int, width: int, folder: Path | None, name: str) -> np.ndarray:
    if rows * width * 4 <= IN_MEMORY_LIMIT_BYTES or folder is None:
        return np.zeros((rows, width), dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(folder / f"activations-{name}.npy", mode="w+", dtype=np.float32,
                                     shape=(rows, width))


@contextmanager
def _passthrough(blocks: list[nn.Module], returns_tuple: bool | None) -> Iterator[None]:
    """Make ``blocks`` return their input hidden states unchanged while the context is active."""

    def make(block: nn.Module):
        def forward(*args, **kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            return (hidden,) if returns_tuple else hidden
        return forward

    for block in blocks:
        block.forward = make(block)
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


class CachedPrefix:
    """While active, the model's embeddings return cached hidden states and the bottom blocks pass them on.

    Call :meth:`select` with the batch's example indices (and which cache: train or validation) before
    each forward pass.
    """

    def __init__(self, model: nn.Module, depth: int) -> None:
        anatomy = describe(model)
        self.model = model
        self.embeddings = model.get_submodule(anatomy.embedding_module)
        self.frozen_blocks = [model.get_submodule(p) for p in anatomy.layer_modules[:depth]]
        self.depth = depth
        self._cache: FrozenPrefixCache | None = None
        self._indices: list[int] = []

    def select(self, cache: FrozenPrefixCache, indices: list[int]) -> None:
        self._cache, self._indices = cache, indices

    @contextmanager
    def active(self, returns_tuple: bool) -> Iterator["CachedPrefix"]:
        reference = next(self.model.parameters())

        def embeddings_forward(*args, **kwargs):
            source = kwargs.get("input_ids")
            if source is None:
                source = args[0]
            return self._cache.batch(self._indices, source.shape[1], source.device, reference.dtype)

        self.embeddings.forward = embeddings_forward
        try:
            with _passthrough(self.frozen_blocks, returns_tuple):
                yield self
        finally:
            del self.embeddings.forward
