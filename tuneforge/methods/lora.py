"""LoRA through PEFT; merged into the base weights for deployment.

``run/adapter`` holds the PEFT adapter (small, loadable with ``PeftModel.from_pretrained``);
``run/model`` holds the merged plain model. The merge is checked: merged and unmerged logits
must agree on a probe batch (see :mod:`tuneforge.train.loop`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from torch import nn

from tuneforge.methods.registry import Method, MethodConfig, register


class LoraMethodConfig(MethodConfig):
    name: Literal["lora"] = "lora"
    r: int = Field(16, ge=1, description="Rank of the update matrices.")
    alpha: float = Field(32, gt=0, description="Scaling: the update is multiplied by alpha / r.")
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Module names to adapt; auto = PEFT's default attention projections.")


@register
class Lora(Method):
    name = "lora"
    config_class = LoraMethodConfig
    summary = "low-rank updates of the attention projections; mergeable, small adapter"

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import LoraConfig, TaskType, get_peft_model

        config = self.config
        peft_config = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=None if config.target_modules == "auto" else config.target_modules,
        )
        return get_peft_model(model, peft_config)

    def save(self, model: nn.Module, run_dir: Path) -> nn.Module:
        model.save_pretrained(run_dir / "adapter", safe_serialization=True)
        merged = model.merge_and_unload()
        merged.save_pretrained(run_dir / "model", safe_serialization=True)
        return merged
