"""Full fine-tuning: every parameter trains."""

from __future__ import annotations

from typing import Literal

from torch import nn

from tuneforge.core.methods.registry import Method, MethodConfig, register


class FullConfig(MethodConfig):
    name: Literal["full"] = "full"


@register
class FullFineTuning(Method):
    name = "full"
    config_class = FullConfig
    summary = "every weight trains; best accuracy, most memory"

    def prepare(self, model: nn.Module) -> nn.Module:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        return model
