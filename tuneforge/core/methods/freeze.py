"""Feature extraction / partial freezing: the body is frozen except its top N layers.

``unfreeze_top_layers: 0`` trains the head alone (the pooler/final norm and the classifier):
feature extraction. ``N`` also trains the top N blocks. Frozen weights stay bit-identical.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from tuneforge.core.anatomy import describe, set_trainable
from tuneforge.core.methods.registry import Method, MethodConfig, register
from tuneforge.base.errors import UserError


class FreezeConfig(MethodConfig):
    name: Literal["freeze"] = "freeze"
    unfreeze_top_layers: int = Field(0, ge=0, description="0 = head only; N = also the top N layers.")


def trainable_top(model: nn.Module, top_layers: int, include_embeddings: bool = False) -> set[str]:
    """Names of the head's parameters plus those of the top ``top_layers`` blocks."""
    anatomy = describe(model)
    names = set(anatomy.head)
    for layer in anatomy.layers[max(anatomy.num_layers - top_layers, 0):]:
        names.update(layer)
    if include_embeddings:
        names.update(anatomy.embeddings)
    return names


@register
class Freeze(Method):
    name = "freeze"
    config_class = FreezeConfig
    summary = "frozen body, trained head (+ top N layers); fastest, least memory"
    default_learning_rate = 1e-3  # a head alone learns slowly at full fine-tuning's rate (docs/methods.md)

    def prepare(self, model: nn.Module) -> nn.Module:
        layers = describe(model).num_layers
        if self.config.unfreeze_top_layers > layers:
            raise UserError(f"method.unfreeze_top_layers={self.config.unfreeze_top_layers} but the model has "
                            f"{layers} layers: use a value from 0 to {layers}")
        set_trainable(model, trainable_top(model, self.config.unfreeze_top_layers))
        return model

    def frozen_prefix_depth(self, num_layers: int, epochs: int) -> int:
        return max(num_layers - self.config.unfreeze_top_layers, 0)
