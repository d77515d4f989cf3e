"""Prompt tuning through PEFT: ``num_virtual_tokens`` trained input embeddings prepended to every example.

The body, the embeddings and the pooler stay frozen; the virtual tokens and the classification head train.
Initialisation is random or from the embeddings of a text (``init: text`` + ``init_text``). With a BERT-style
encoder the pooler reads the first position, which is now the first virtual token; it is trained, so it
learns to act as the summary token. Not mergeable: the run keeps base + adapter.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator
from torch import nn

from tuneforge.core.methods.peft_method import PeftMethod, peft_task_type
from tuneforge.core.methods.registry import MethodConfig, register


class PromptMethodConfig(MethodConfig):
    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Trained tokens prepended to each input.")
    init: Literal["random", "text"] = Field("random", description="Start from random vectors or from init_text.")
    init_text: str | None = Field(None, description="With init: text, e.g. 'Classify the sentiment of this review:'.")

    @model_validator(mode="after")
    def _text_given(self) -> "PromptMethodConfig":
        if self.init == "text" and not (self.init_text or "").strip():
            raise ValueError("init: text needs init_text (the words whose embeddings start the prompt)")
        return self


@register
class PromptTuning(PeftMethod):
    name = "prompt"
    config_class = PromptMethodConfig
    summary = "trained virtual tokens prepended to the input; smallest adapter, frozen body"
    default_learning_rate = 1e-2

    def peft_config(self, model: nn.Module) -> Any:
        from peft import PromptTuningConfig, PromptTuningInit

        config = self.config
        text = config.init == "text"
        return PromptTuningConfig(
            task_type=peft_task_type(model), num_virtual_tokens=config.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=config.init_text if text else None,
            tokenizer_name_or_path=model.config._name_or_path if text else None,
        )

    @classmethod
    def loaded_config(cls, config: Any) -> Any:
        from peft import PromptTuningInit

        # The trained embeddings are in the adapter; re-tokenizing the init text at load time is needless
        # (and needs the tokenizer where the run was trained).
        config.prompt_tuning_init = PromptTuningInit.RANDOM
        config.prompt_tuning_init_text = None
        return config
