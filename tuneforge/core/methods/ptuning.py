"""P-tuning (v1) through PEFT: virtual tokens produced by a small trained encoder (MLP or LSTM).

Like prompt tuning, but the ``num_virtual_tokens`` embeddings come out of a prompt encoder, which makes them
easier to optimise. Only the resulting embeddings and the head are needed at inference. Not mergeable.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from torch import nn

from tuneforge.core.methods.peft_method import PeftMethod, peft_task_type
from tuneforge.core.methods.registry import MethodConfig, register


class PtuningMethodConfig(MethodConfig):
    name: Literal["ptuning"] = "ptuning"
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Virtual tokens prepended to each input.")
    encoder: Literal["mlp", "lstm"] = Field("mlp", description="The prompt encoder's type.")
    encoder_hidden_size: int = Field(128, ge=1, description="Hidden width of the prompt encoder.")


@register
class Ptuning(PeftMethod):
    name = "ptuning"
    config_class = PtuningMethodConfig
    summary = "virtual tokens produced by a small trained encoder (p-tuning v1); frozen body"
    default_learning_rate = 3e-3

    def peft_config(self, model: nn.Module) -> Any:
        from peft import PromptEncoderConfig, PromptEncoderReparameterizationType

        config = self.config
        return PromptEncoderConfig(
            task_type=peft_task_type(model), num_virtual_tokens=config.num_virtual_tokens,
            encoder_reparameterization_type=(PromptEncoderReparameterizationType.MLP if config.encoder == "mlp"
                                             else PromptEncoderReparameterizationType.LSTM),
            encoder_hidden_size=config.encoder_hidden_size,
        )
