"""AdaLoRA through PEFT: LoRA whose rank budget is reallocated during training to the matrices that matter.

Training starts every adapted matrix at rank ``init_r``; after a warm-up (``tinit_fraction`` of the
optimizer steps) the total rank budget shrinks towards ``target_r`` per matrix on average, keeping the
singular triplets with the highest importance; the last ``tfinal_fraction`` of the steps trains with the
final allocation. The schedule needs the number of optimizer steps, which the loop hands over through
:meth:`~tuneforge.core.methods.registry.Method.on_optimizer_step`.

Not supported yet: AdaLoRA's orthogonal regularisation (``orth_reg_weight``) — PEFT adds it only to the
loss its own forward computes from labels, and tuneforge's loop computes the loss itself.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator
from torch import nn

from tuneforge.core.methods.peft_method import MergeableConfig, PeftMethod, peft_task_type
from tuneforge.core.methods.registry import register

# A placeholder step count until the loop tells the real one (PEFT wants one at construction).
_UNKNOWN_TOTAL_STEPS = 1_000_000


class AdaLoraMethodConfig(MergeableConfig):
    name: Literal["adalora"] = "adalora"
    init_r: int = Field(12, ge=1, description="Rank of every adapted matrix at the start.")
    target_r: int = Field(8, ge=1, description="Average rank per matrix after the budget shrinks.")
    alpha: float = Field(32, gt=0, description="Scaling of the update (alpha / rank).")
    dropout: float = Field(0.1, ge=0, lt=1)
    tinit_fraction: float = Field(0.1, ge=0, lt=1, description="Share of the steps before ranks start shrinking.")
    tfinal_fraction: float = Field(0.2, ge=0, lt=1, description="Share of the steps trained with the final ranks.")
    delta_t: int = Field(1, ge=1, description="Steps between two budget reallocations.")
    target_modules: list[str] | Literal["auto"] = Field("auto", description="auto = PEFT's defaults.")

    @model_validator(mode="after")
    def _ranks_and_phases(self) -> "AdaLoraMethodConfig":
        if self.target_r > self.init_r:
            raise ValueError(f"target_r ({self.target_r}) must not exceed init_r ({self.init_r})")
        if self.tinit_fraction + self.tfinal_fraction >= 1:
            raise ValueError("tinit_fraction + tfinal_fraction must be below 1 (no steps would shrink the ranks)")
        return self


@register
class AdaLora(PeftMethod):
    name = "adalora"
    config_class = AdaLoraMethodConfig
    summary = "LoRA whose ranks are reallocated to the matrices that matter during training; mergeable"
    mergeable: ClassVar[bool] = True
    default_learning_rate = 1e-3

    def peft_config(self, model: nn.Module) -> Any:
        from peft import AdaLoraConfig

        config = self.config
        return AdaLoraConfig(
            task_type=peft_task_type(model), init_r=config.init_r, target_r=config.target_r,
            lora_alpha=config.alpha, lora_dropout=config.dropout, deltaT=config.delta_t,
            total_step=_UNKNOWN_TOTAL_STEPS, tinit=0, tfinal=0, orth_reg_weight=0.0,
            target_modules=None if config.target_modules == "auto" else config.target_modules,
        )

    def on_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        tuner = model.base_model
        peft_config = tuner.peft_config[tuner.trainable_adapter_name]
        if peft_config.total_step != total_steps:  # first step: the real schedule
            peft_config.total_step = total_steps
            peft_config.tinit = int(self.config.tinit_fraction * total_steps)
            peft_config.tfinal = int(self.config.tfinal_fraction * total_steps)
            tuner.rankallocator.set_total_step(total_steps)
        tuner.update_and_allocate(step)
