"""LoRA through PEFT: low-rank updates of the attention projections, merged for deployment by default.

``run/adapter`` holds the PEFT adapter (small, loadable with ``PeftModel.from_pretrained``). With
``merge: true`` (the default) ``run/model`` holds the merged plain model, checked against the unmerged
one on a probe batch (see :mod:`tuneforge.core.engine.loop`); with ``merge: false`` the run keeps base + adapter
(see :mod:`tuneforge.core.methods.layout`).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field
from torch import nn

from tuneforge.core.methods.peft_method import (MergeableConfig, PeftMethod, image_modules_to_save, image_target_modules,
                                           is_image_classifier, peft_task_type)
from tuneforge.core.methods.registry import register


class LoraMethodConfig(MergeableConfig):
    name: Literal["lora"] = "lora"
    r: int = Field(16, ge=1, description="Rank of the update matrices.")
    alpha: float = Field(32, gt=0, description="Scaling: the update is multiplied by alpha / r.")
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Module names to adapt; auto = PEFT's default attention projections (image "
                            "models: ViT query/value, convolutional models every ungrouped Conv2d).")


@register
class Lora(PeftMethod):
    name = "lora"
    config_class = LoraMethodConfig
    summary = "low-rank updates of the attention projections; mergeable, small adapter"
    mergeable: ClassVar[bool] = True
    default_learning_rate = 1e-3
    use_dora: ClassVar[bool] = False

    def peft_config(self, model: nn.Module) -> Any:
        from peft import LoraConfig

        config = self.config
        target_modules = None if config.target_modules == "auto" else config.target_modules
        modules_to_save = None
        if is_image_classifier(model):
            # PEFT has no image-classification task type: name the adapted layers and the head (+ BatchNorm) ourselves.
            target_modules = target_modules or image_target_modules(model)
            modules_to_save = image_modules_to_save(model)
        return LoraConfig(
            task_type=peft_task_type(model),
            r=config.r,
            lora_alpha=config.alpha,
            lora_dropout=config.dropout,
            target_modules=target_modules,
            modules_to_save=modules_to_save,
            use_dora=self.use_dora,
        )
