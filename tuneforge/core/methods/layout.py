"""What a run folder holds when its method cannot be merged into a plain model, and how to read it back.

A mergeable method (full, freeze, gradual; LoRA/DoRA/IA3/AdaLoRA with ``merge: true``) writes a plain
transformers model into ``run/model`` that ``pipeline()`` loads. The others write:

- ``run/base/``: the model's own weights as a plain transformers model (``config.json`` with the run's
  labels + ``model.safetensors``), without any of the method's modules;
- ``run/adapter/``: the method's weights (small), and the parameters of the base that trained (the head);
- ``run/model/``: the tokenizer only (no ``config.json``, so nothing mistakes it for the trained model).

:meth:`tuneforge.core.methods.Method.load` of such a method rebuilds base + adapter; ``tuneforge predict`` and
``tuneforge eval`` go through it, so they load every run the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tuneforge.base.errors import UserError
from tuneforge.base.quiet import quiet_transformers

BASE_DIR = "base"
ADAPTER_DIR = "adapter"

# Name fragments that wrappers (PEFT's tuner layers and modules_to_save) insert into parameter names.
_WRAPPER_FRAGMENTS = (".base_layer.", ".original_module.")


def has_plain_model(run_dir: Path) -> bool:
    """Whether ``run_dir/model`` holds a plain transformers model (as opposed to the tokenizer only)."""
    return (Path(run_dir) / "model" / "config.json").is_file()


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights of ``model`` under the names a freshly built model of its config has.

    Wrapper names (``.base_layer.``, ``.original_module.``) are undone and any module the method added
    (LoRA matrices, adapters, prefixes) is left out. Raises if a weight of the plain model is not found.
    """
    with torch.device("meta"):
        # The model's own class (a classifier, a causal or masked LM): methods keep it (PEFT's base model,
        # our injected modules), so its freshly built twin has exactly the plain names.
        fresh = type(model)(model.config)
    expected = set(fresh.state_dict())
    plain: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if "modules_to_save." in key:
            continue
        for fragment in _WRAPPER_FRAGMENTS:
            key = key.replace(fragment, ".")
        if key in expected:
            plain[key] = value
    missing = expected - set(plain)
    # Tied weights (e.g. an output embedding tied to the input one) are saved once by transformers too.
    tied = {key for key in missing if _is_tied(fresh, key)}
    if missing - tied:
        raise RuntimeError(f"cannot write the base model: weights not found: {sorted(missing - tied)[:5]}")
    return plain


def _is_tied(model: nn.Module, key: str) -> bool:
    keys = getattr(model, "_tied_weights_keys", None) or {}
    return key in keys


def save_base(model: nn.Module, folder: Path) -> None:
    """Write ``model`` without the method's modules as a plain transformers model into ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for key, value in plain_state_dict(model).items():
        value = value.detach().to("cpu").contiguous()
        pointer = value.untyped_storage().data_ptr()
        state[key] = value.clone() if pointer in seen else value  # safetensors refuses shared storage
        seen.add(pointer)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.architectures = [type(model).__name__]  # load_base picks the model class from it
    config.save_pretrained(folder)


def auto_class_for(config) -> type:
    """The transformers Auto class that rebuilds a model of ``config.architectures`` (a causal or masked LM,
    an image classifier);
    a classifier otherwise (base models saved before the architectures were recorded are classifiers)."""
    from transformers import (AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForMaskedLM,
                              AutoModelForSequenceClassification)

    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith("ForImageClassification") for name in architectures):
        return AutoModelForImageClassification
    if any(name.endswith("ForCausalLM") for name in architectures):
        return AutoModelForCausalLM
    if any(name.endswith("ForMaskedLM") for name in architectures):
        return AutoModelForMaskedLM
    return AutoModelForSequenceClassification


def load_base(run_dir: Path, read_plain: Callable[[Path], nn.Module] | None = None) -> nn.Module:
    """The plain base model of a non-merged run (eval mode); ``read_plain``: the task's reader of a plain model
    folder (default :func:`load_plain_model`)."""
    folder = Path(run_dir) / BASE_DIR
    if not (folder / "config.json").is_file():
        raise UserError(f"{run_dir}: has no trained model (neither model/config.json nor base/; did the run finish? "
                        "see run.json)")
    with quiet_transformers():
        return (read_plain or load_plain_model)(folder)


def load_plain_model(folder: Path) -> nn.Module:
    """A plain transformers model folder (``config.json`` + weights) as the class it was saved as, in eval mode."""
    from transformers import AutoConfig

    with quiet_transformers():
        return auto_class_for(AutoConfig.from_pretrained(folder)).from_pretrained(folder).eval()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
