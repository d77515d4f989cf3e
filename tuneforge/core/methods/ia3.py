"""IA3 through PEFT: learned vectors that rescale keys, values and the feed-forward activations.

The fewest trained parameters of the weight-side methods (one vector per adapted projection, plus the
head); the update is a per-channel scaling, so it merges exactly into the base weights.

Image classifiers: vision transformers (ViT, DeiT, ...) get the paper's placement, the attention keys and values
and the feed-forward activations (the input of the second MLP layer), with the head (and any BatchNorm) trained
fully (:func:`image_ia3_modules`); convolutional models have neither and are refused by the image task.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field
from torch import nn

from tuneforge.core.methods.peft_method import (MergeableConfig, PeftMethod, image_head_names, image_modules_to_save,
                                           is_image_classifier, peft_task_type)
from tuneforge.core.methods.registry import register
from tuneforge.base.errors import UserError


class Ia3MethodConfig(MergeableConfig):
    name: Literal["ia3"] = "ia3"
    target_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Modules whose outputs are rescaled; auto = PEFT's defaults (keys, values, FFN).")
    feedforward_modules: list[str] | Literal["auto"] = Field(
        "auto", description="Those of target_modules that are feed-forward layers (their input is rescaled).")


# (targets, feed-forward targets) of vision transformers' blocks: transformers 5 names (attention k_proj/v_proj,
# MLP fc1 -> fc2), then the older ones (key/value, intermediate.dense -> output.dense; as PEFT's BERT default,
# "output.dense" also matches the attention output projection).
VISION_IA3_MODULES = ((("k_proj", "v_proj", "fc2"), ("fc2",)), (("key", "value", "output.dense"), ("output.dense",)))


def image_ia3_modules(model: nn.Module) -> tuple[list[str], list[str]]:
    """(target_modules, feedforward_modules) of IA3 for a vision transformer image classifier."""
    heads = tuple(image_head_names(model))
    linear = [name for name, module in model.named_modules()
              if name and not name.startswith(heads) and isinstance(module, nn.Linear)]
    for targets, feedforward in VISION_IA3_MODULES:
        if all(any(name == t or name.endswith("." + t) for name in linear) for t in targets):
            return list(targets), list(feedforward)
    raise UserError(f"method ia3: {type(model).__name__} has no attention key/value projections and MLP named as "
                    "vision transformers name them; set method.target_modules and method.feedforward_modules")


@register
class Ia3(PeftMethod):
    name = "ia3"
    config_class = Ia3MethodConfig
    summary = "learned rescaling vectors of keys, values and FFN; fewest weights, mergeable"
    mergeable: ClassVar[bool] = True
    default_learning_rate = 3e-3

    def peft_config(self, model: nn.Module) -> Any:
        from peft import IA3Config

        config = self.config
        if (config.target_modules == "auto") != (config.feedforward_modules == "auto"):
            raise UserError("method.target_modules and method.feedforward_modules: set both or neither "
                            "(feedforward_modules must be a subset of target_modules)")
        target_modules = None if config.target_modules == "auto" else config.target_modules
        feedforward_modules = None if config.feedforward_modules == "auto" else config.feedforward_modules
        modules_to_save = None
        if is_image_classifier(model):
            # PEFT has no IA3 defaults for image models: name keys/values/FFN and the head (+ BatchNorm) ourselves.
            if target_modules is None:
                target_modules, feedforward_modules = image_ia3_modules(model)
            modules_to_save = image_modules_to_save(model)
        return IA3Config(
            task_type=peft_task_type(model),
            target_modules=target_modules,
            feedforward_modules=feedforward_modules,
            modules_to_save=modules_to_save,
        )
