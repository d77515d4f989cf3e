"""DoRA (weight-decomposed LoRA) through PEFT: LoRA on the direction of each adapted weight plus a trained
magnitude vector. Same keys and save layout as :mod:`tuneforge.core.methods.lora`; mergeable."""

from __future__ import annotations

from typing import ClassVar, Literal

from tuneforge.core.methods.lora import Lora, LoraMethodConfig
from tuneforge.core.methods.registry import register


class DoraMethodConfig(LoraMethodConfig):
    name: Literal["dora"] = "dora"  # type: ignore[assignment]


@register
class Dora(Lora):
    name = "dora"
    config_class = DoraMethodConfig
    summary = "LoRA on weight directions plus trained magnitudes; mergeable, a little slower than LoRA"
    use_dora: ClassVar[bool] = True
