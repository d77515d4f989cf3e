"""IA3 through PEFT: learned vectors that rescale keys, values and the feed-forward activations.

The fewest trained parameters of the weight-side methods (one vector per adapted projection, plus the
head); the update is a per-channel scaling, so it merges exactly into the base weights.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field
from torch import nn

from tuneforge.methods.peft_method import MergeableConfig, PeftMethod, peft_task_type
from tuneforge.methods.registry import register


class Ia3MethodConfig(MergeableConfig):
    name: Literal["ia3"] = "ia3"
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Modules whose outputs are rescaled; auto = PEFT's defaults (keys, values, FFN).")
    feedforward_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Those of target_modules that are feed-forward layers (their input is rescaled).")


@register
class Ia3(PeftMethod):
    name = "ia3"
    config_class = Ia3MethodConfig
    summary = "learned rescaling vectors of keys, values and FFN; fewest weights, mergeable"
    mergeable: ClassVar[bool] = True
    default_learning_rate = 3e-3

    def peft_config(self, model: nn.Module) -> Any:
        from peft import IA3Config
        from tuneforge.errors import UserError

        config = self.config
        if (config.target_modules == "auto") != (config.feedforward_modules == "auto"):
            raise UserError("method.target_modules and method.feedforward_modules: set both or neither "
                            "(feedforward_modules must be a subset of target_modules)")
        return IA3Config(
            task_type=peft_task_type(model),
            target_modules=None if config.target_modules == "auto" else config.target_modules,
            feedforward_modules=None if config.feedforward_modules == "auto" else config.feedforward_modules,
        )
