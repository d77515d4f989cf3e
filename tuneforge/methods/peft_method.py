"""The part every PEFT-backed method shares: wrap, save (merged or base + adapter), load.

A subclass says only how its PEFT config is built (:meth:`PeftMethod.peft_config`). ``run/adapter`` always
holds the PEFT adapter (loadable with ``PeftModel.from_pretrained``). With ``merge: true`` (methods whose
update is linear in the weights: LoRA, DoRA, IA3, AdaLoRA) ``run/model`` is the merged plain model;
otherwise ``run/base`` + ``run/adapter`` are written (see :mod:`tuneforge.methods.layout`) and
:meth:`PeftMethod.load` rebuilds the PEFT model from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from torch import nn

from tuneforge.methods.layout import ADAPTER_DIR, BASE_DIR, has_plain_model, load_base, model_device, save_base
from tuneforge.methods.registry import Method, MethodConfig


def peft_task_type(model: nn.Module) -> Any:
    """PEFT's task type for ``model``'s head: a causal LM gets CAUSAL_LM (prompt tuning then pads the labels
    for its virtual tokens and generation works), a classifier SEQ_CLS (its head trains and is saved), any
    other model (a masked LM) None, PEFT's plain wrapper."""
    from peft import TaskType

    kind = type(model).__name__
    if kind.endswith("ForCausalLM"):
        return TaskType.CAUSAL_LM
    if kind.endswith("ForMaskedLM"):
        return None
    return TaskType.SEQ_CLS


def unsupported_model_error(method: str, model: nn.Module, error: ValueError):
    """A UserError for PEFT's "Please specify ..." errors: the method is not supported yet for this model type."""
    from tuneforge.errors import UserError

    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    message = str(error)
    if "target_modules" in message:
        names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                        if isinstance(module, nn.Linear) and "classifier" not in name and "score" not in name})
        return UserError(f"method {method}: not supported yet for {model_type} models with target_modules: auto "
                         f"(PEFT has no default target modules for them); set method.target_modules to the layers to "
                         f"adapt; this model's linear layers are named: {', '.join(names)}")
    if "token_dim" in message or "num_attention_heads" in message or "num_layers" in message:
        return UserError(f"method {method}: not supported yet for {model_type} models (PEFT cannot read the hidden "
                         f"size / layer count from their config: {message}); use lora or adapter instead")
    return error


class MergeableConfig(MethodConfig):
    """Keys of a method whose trained update can be folded into the base weights."""

    merge: bool = Field(True, description="Write a merged plain model into model/ (pipeline-loadable); "
                                          "false: base/ + adapter/, loaded back by tuneforge.")


class PeftMethod(Method):
    """Base class of the methods implemented by PEFT."""

    mergeable: ClassVar[bool] = False

    def peft_config(self, model: nn.Module) -> Any:
        """The ``peft`` config object for ``model``."""
        raise NotImplementedError

    def prepare(self, model: nn.Module) -> nn.Module:
        from peft import get_peft_model

        try:
            return get_peft_model(model, self.peft_config(model))
        except ValueError as error:
            # PEFT knows default target modules (and the hidden size for virtual tokens) only for the model
            # types it lists; for the others (e.g. DistilBERT) it raises a bare ValueError. Say what to do.
            raise unsupported_model_error(self.config.name, model, error) from None

    @property
    def merges(self) -> bool:
        return self.mergeable and bool(getattr(self.config, "merge", False))

    def save(self, model: nn.Module, run_dir: Path) -> nn.Module:
        model.save_pretrained(run_dir / ADAPTER_DIR, safe_serialization=True)
        if self.merges:
            merged = model.merge_and_unload()
            merged.save_pretrained(run_dir / "model", safe_serialization=True)
            return merged
        save_base(model.get_base_model(), run_dir / BASE_DIR)
        return self.load(run_dir, self.config).to(model_device(model))

    @classmethod
    def loaded_config(cls, config: Any) -> Any:
        """Adjust the saved PEFT config before loading (e.g. no text initialisation: the weights are saved)."""
        return config

    @classmethod
    def load(cls, run_dir: Path, config: MethodConfig) -> nn.Module:
        if has_plain_model(run_dir):
            return super().load(run_dir, config)
        from peft import PeftConfig, PeftModel

        base = load_base(run_dir)
        adapter = Path(run_dir) / ADAPTER_DIR
        peft_config = cls.loaded_config(PeftConfig.from_pretrained(adapter))
        return PeftModel.from_pretrained(base, adapter, config=peft_config, is_trainable=False).eval()
