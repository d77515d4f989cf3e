"""The part every PEFT-backed method shares: wrap, save (merged or base + adapter), load.

A subclass says only how its PEFT config is built (:meth:`PeftMethod.peft_config`). ``run/adapter`` always
holds the PEFT adapter (loadable with ``PeftModel.from_pretrained``). With ``merge: true`` (methods whose
update is linear in the weights: LoRA, DoRA, IA3, AdaLoRA) ``run/model`` is the merged plain model;
otherwise ``run/base`` + ``run/adapter`` are written (see :mod:`tuneforge.core.methods.layout`) and
:meth:`PeftMethod.load` rebuilds the PEFT model from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field
from torch import nn

from tuneforge.core.methods.layout import (ADAPTER_DIR, BASE_DIR, has_plain_model, load_base, load_plain_model,
                                           model_device, save_base)
from tuneforge.core.methods.registry import Method, MethodConfig, PlainModelReader
from tuneforge.base.errors import UserError


def peft_task_type(model: nn.Module) -> Any:
    """PEFT's task type for ``model``'s head: a causal LM gets CAUSAL_LM (prompt tuning then pads the labels
    for its virtual tokens and generation works), a classifier SEQ_CLS (its head trains and is saved), any
    other model (a masked LM) None, PEFT's plain wrapper."""
    from peft import TaskType

    kind = type(model).__name__
    if kind.endswith("ForCausalLM"):
        return TaskType.CAUSAL_LM
    if kind.endswith("ForMaskedLM") or is_image_classifier(model):
        # An image classifier takes pixel_values, which PEFT's SEQ_CLS wrapper does not pass on; the plain
        # wrapper forwards every keyword, and image_peft_defaults names the head to train (modules_to_save).
        return None
    return TaskType.SEQ_CLS


def is_image_classifier(model: nn.Module) -> bool:
    """Whether ``model`` is a transformers image classifier (ViT, ResNet, MobileNetV2, ConvNeXt, ...)."""
    return type(model).__name__.endswith("ForImageClassification")


# Heads of transformers' image classifiers (ViT, ResNet, MobileNetV2, ConvNeXt, Swin, ... all call it classifier).
IMAGE_HEAD_NAMES = ("classifier", "head", "fc")
# Query and value projection names of vision transformers' attention (transformers 5 names first).
ATTENTION_QUERY_VALUE = (("q_proj", "v_proj"), ("query", "value"))


def image_head_names(model: nn.Module) -> list[str]:
    """The head of an image classifier: replaced for the run's labels, so it trains fully (modules_to_save)."""
    heads = [name for name in IMAGE_HEAD_NAMES if isinstance(getattr(model, name, None), nn.Module)]
    return heads[:1]


def image_modules_to_save(model: nn.Module) -> list[str]:
    """Modules of an image classifier that train fully beside the adapter and are saved in it: the head, and
    every BatchNorm layer (by full name). BatchNorm running statistics move while training in any case; without
    them in the adapter, ``run/adapter`` on the original weights would not answer as the trained model does."""
    from torch.nn.modules.batchnorm import _BatchNorm

    heads = image_head_names(model)
    norms = [name for name, module in model.named_modules()
             if isinstance(module, _BatchNorm) and not name.startswith(tuple(heads))]
    return heads + norms


def image_target_modules(model: nn.Module) -> list[str]:
    """Default modules to adapt in an image classifier, per family.

    Vision transformers (ViT, DeiT, BEiT, ...: attention projections named ``q_proj``/``v_proj`` in
    transformers 5, ``query``/``value`` before): the query and value projections, as PEFT does for text
    encoders. Convolutional models (ResNet, MobileNetV2, ConvNeXt, ...): every ungrouped
    ``Conv2d`` (PEFT's LoRA supports Conv2d; depthwise convolutions are left out) and every ``Linear`` outside
    the head (ConvNeXt's pointwise layers), by full module name.
    """
    heads = tuple(image_head_names(model))
    body = [(name, module) for name, module in model.named_modules() if name and not name.startswith(heads)]
    leaves = {name.rsplit(".", 1)[-1] for name, module in body if isinstance(module, nn.Linear)}
    for attention in ATTENTION_QUERY_VALUE:
        if set(attention) <= leaves:
            return list(attention)
    targets = [name for name, module in body
               if (isinstance(module, nn.Conv2d) and module.groups == 1) or isinstance(module, nn.Linear)]
    if not targets:
        raise UserError(f"{type(model).__name__}: no attention query/value projections and no Conv2d/Linear "
                        "layers found to adapt; set method.target_modules")
    return targets


def unsupported_model_error(method: str, model: nn.Module, error: ValueError):
    """A UserError for PEFT's "Please specify ..." errors: the method is not supported yet for this model type."""
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
    def load(cls, run_dir: Path, config: MethodConfig, read_plain: PlainModelReader = load_plain_model) -> nn.Module:
        if has_plain_model(run_dir):
            return super().load(run_dir, config, read_plain)
        from peft import PeftConfig, PeftModel

        base = load_base(run_dir, read_plain)
        adapter = Path(run_dir) / ADAPTER_DIR
        peft_config = cls.loaded_config(PeftConfig.from_pretrained(adapter))
        return PeftModel.from_pretrained(base, adapter, config=peft_config, is_trainable=False).eval()
