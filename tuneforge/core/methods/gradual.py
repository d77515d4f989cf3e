"""Gradual (progressive) unfreezing, ULMFiT-style.

Epoch 0 trains the head alone; every ``unfreeze_every`` epochs one more block is unfrozen from the
top; once every block trains, the embeddings follow. The optimizer owns every parameter from the
start (a frozen one has no gradient, so AdamW leaves it and its state untouched until it thaws).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

from pydantic import Field
from torch import nn

from tuneforge.core.anatomy import describe, set_trainable
from tuneforge.core.methods.freeze import trainable_top
from tuneforge.core.methods.registry import Method, MethodConfig, register


class GradualConfig(MethodConfig):
    name: Literal["gradual"] = "gradual"
    unfreeze_every: int = Field(1, ge=1, description="Epochs between two unfreezing steps.")


@register
class GradualUnfreezing(Method):
    name = "gradual"
    config_class = GradualConfig
    summary = "head first, then one more layer from the top every few epochs"

    def prepare(self, model: nn.Module) -> nn.Module:
        set_trainable(model, trainable_top(model, 0))
        return model

    def optimizer_parameters(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        return iter(model.named_parameters())

    def frozen_prefix_depth(self, num_layers: int, epochs: int) -> int:
        thawed_at_end = self.unfrozen_layers(epochs - 1)
        return 0 if thawed_at_end > num_layers else num_layers - thawed_at_end

    def unfrozen_layers(self, epoch: int) -> int:
        """How many blocks from the top train in ``epoch`` (may exceed the depth: embeddings too)."""
        return epoch // self.config.unfreeze_every

    def on_epoch_start(self, model: nn.Module, epoch: int) -> str | None:
        layers = describe(model).num_layers
        top = self.unfrozen_layers(epoch)
        set_trainable(model, trainable_top(model, min(top, layers), include_embeddings=top > layers))
        if epoch % self.config.unfreeze_every != 0 and epoch:
            return None
        if top == 0:
            return "gradual: training the head only"
        if top > layers:
            return "gradual: every layer and the embeddings now train"
        return f"gradual: top {top} of {layers} layers now train"
