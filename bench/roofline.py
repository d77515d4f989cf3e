"""The roofline every bench reports beside its speed: this CPU's fp32 matmul rate, and the FLOPs a BERT-style
encoder really needs for the tokens it is given (no padding), so a fraction of the roofline can be stated.

Matmul rate: the best of a few timed ``2048 x 2048 @ 2048 x 2048`` fp32 products (2 * 2048^3 FLOPs each), at
PyTorch's thread count; measured at the start of a bench, on the machine as it is then.

FLOPs of a row of ``n`` real tokens through a BERT-style encoder (embedding lookups and element-wise work not
counted; they are small next to the matmuls):

    forward(n) = sum over blocks of [ 2 * P_block * n  +  4 * n^2 * H ]  +  2 * P_head

- ``P_block``: the weights of the block's Linear layers (Q, K, V, attention output, FFN in and out), applied to
  every token: a multiply-add per weight per token, 2 FLOPs;
- ``4 * n^2 * H``: attention scores ``Q K^T`` and the weighted sum ``A V``, each ``2 * n^2 * H``;
- ``P_head``: the Linear layers outside the blocks (pooler, classifier), applied to one token per row.

A training step adds the backward pass of what is trained: the gradients with respect to the activations
(about one forward) from the top down to the lowest trainable block, and the gradients with respect to the
trainable weights (about one forward of those layers):

- ``full``: 3 * forward;
- ``lora`` (adapters in every block): 2 * forward (activation gradients through every block; the adapters'
  own weight gradients are a rounding error);
- ``freeze`` (head only): forward + 2 * head;
- ``freeze-top2``: forward + 2 * (top two blocks + head).

INT8 models are charged the same FLOPs as fp32 (their "fraction" is against the fp32 matmul rate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """fp32 GFLOP/s of the best of ``repeats`` ``size``-square matmuls (after one warm-up)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


@dataclass
class EncoderShape:
    """What the FLOP count needs: per-block Linear weights, the Linear weights outside the blocks, the width."""

    block_linear_params: list[int]
    head_linear_params: int
    hidden: int

    @classmethod
    def of(cls, model: nn.Module) -> EncoderShape:
        """Read from a transformers encoder classifier (blocks are the modules of ``encoder.layer``)."""
        blocks = None
        for name, module in model.named_modules():
            if name.endswith("encoder.layer") and isinstance(module, nn.ModuleList):
                blocks = module
                break
        if blocks is None:
            raise ValueError(f"{type(model).__name__}: no encoder.layer blocks found (BERT-style encoders only)")
        block_params = [sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear)) for block in blocks]
        in_blocks = {id(m) for block in blocks for m in block.modules()}
        head = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear) and id(m) not in in_blocks)
        return cls(block_params, head, int(model.config.hidden_size))

    def block_forward(self, block: int, tokens: int) -> float:
        return 2.0 * self.block_linear_params[block] * tokens + 4.0 * tokens * tokens * self.hidden

    def forward(self, tokens: int) -> float:
        """FLOPs of one row of ``tokens`` real tokens (see the module docstring)."""
        blocks = sum(self.block_forward(i, tokens) for i in range(len(self.block_linear_params)))
        return blocks + 2.0 * self.head_linear_params

    def training(self, tokens: int, method: str) -> float:
        """FLOPs of one training example (forward + backward of what ``method`` trains)."""
        forward = self.forward(tokens)
        head = 2.0 * self.head_linear_params
        if method == "full":
            return 3 * forward
        if method == "lora":
            return 2 * forward
        if method == "freeze":
            return forward + 2 * head
        if method == "freeze-top2":
            top = sum(self.block_forward(i, tokens) for i in range(len(self.block_linear_params))[-2:])
            return forward + 2 * (top + head)
        raise ValueError(f"no FLOP model for method {method}")


def fraction(flops: float, seconds: float, peak_gflops: float) -> dict:
    """Achieved GFLOP/s and its share of ``peak_gflops``."""
    achieved = flops / seconds / 1e9 if seconds > 0 else 0.0
    return {"gflops": round(achieved, 2), "roofline_fraction": round(achieved / peak_gflops, 3)}
