"""Methods of our own that add small modules to a frozen transformers model (adapters, prefixes).

Such a method attaches its modules as children of existing modules (names containing ``tf_``) and wires
them in with forward hooks, so the model keeps its class, its parameter names and everything that works on
it (gradient checkpointing, ``describe``, the loop). It saves as base + adapter (see
:mod:`tuneforge.core.methods.layout`): ``adapter/adapter.safetensors`` holds every parameter that trained (the
method's modules and the head) and ``adapter/adapter_config.json`` the method's keys.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from tuneforge.core.anatomy import describe, set_trainable
from tuneforge.base.errors import UserError
from tuneforge.core.methods.layout import ADAPTER_DIR, BASE_DIR, load_base, load_plain_model, model_device, save_base
from tuneforge.core.methods.registry import Method, MethodConfig, PlainModelReader

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def layer_stack(model: nn.Module) -> list[nn.Module]:
    """The model's blocks, bottom to top: the largest ``nn.ModuleList`` (the rule of :func:`describe`)."""
    stacks = [module for module in model.modules() if isinstance(module, nn.ModuleList) and len(module) > 0]
    if not stacks:
        raise UserError(f"{type(model).__name__}: found no stack of layers (nn.ModuleList)")
    return list(max(stacks, key=lambda stack: sum(p.numel() for p in stack.parameters())))


def find_in_block(block: nn.Module, candidates: tuple[str, ...]) -> tuple[str, nn.Module] | None:
    """The first of ``candidates`` (dotted paths) that exists inside ``block``."""
    for path in candidates:
        try:
            return path, block.get_submodule(path)
        except AttributeError:
            continue
    return None


class InjectedMethod(Method):
    """Base class: freeze the model, keep the head trainable, attach the method's modules."""

    def attach(self, model: nn.Module, initialise: bool) -> None:
        """Add the method's modules and hooks to ``model`` (``initialise``: fresh weights, else to be loaded)."""
        raise NotImplementedError

    def base_trainable(self, model: nn.Module) -> set[str]:
        """Names of the model's own parameters that train: the head (classifier, pooler or final norm)."""
        return set(describe(model).head)

    def prepare(self, model: nn.Module) -> nn.Module:
        set_trainable(model, self.base_trainable(model))
        self.attach(model, initialise=True)
        return model

    def adapter_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What ``adapter/`` keeps: every parameter that trained."""
        return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}

    def save(self, model: nn.Module, run_dir: Path) -> nn.Module:
        from safetensors.torch import save_file

        save_base(model, run_dir / BASE_DIR)
        folder = run_dir / ADAPTER_DIR
        folder.mkdir(parents=True, exist_ok=True)
        state = {name: value.to("cpu").contiguous() for name, value in self.adapter_state(model).items()}
        save_file(state, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (folder / ADAPTER_CONFIG).write_text(json.dumps(self.config.model_dump(mode="json"), indent=2), encoding="utf-8")
        return self.load(run_dir, self.config).to(model_device(model))

    @classmethod
    def load(cls, run_dir: Path, config: MethodConfig, read_plain: PlainModelReader = load_plain_model) -> nn.Module:
        from safetensors.torch import load_file

        model = load_base(run_dir, read_plain)
        weights = Path(run_dir) / ADAPTER_DIR / ADAPTER_WEIGHTS
        if not weights.is_file():
            raise UserError(f"{run_dir}: {ADAPTER_DIR}/{ADAPTER_WEIGHTS} is missing; the run is incomplete")
        method = cls(config)
        method.attach(model, initialise=False)
        result = model.load_state_dict(load_file(str(weights)), strict=False)
        if result.unexpected_keys:
            raise UserError(f"{weights}: weights this model has no place for: {result.unexpected_keys[:5]}")
        missing = [key for key in result.missing_keys if ".tf_" in f".{key}"]
        if missing:
            raise UserError(f"{weights}: the method's weights are missing: {missing[:5]}")
        return model.eval()
