"""The method registry: each fine-tuning method is one small class registered by name.

A method decides which parameters train and how the trained model is saved; the training loop
never branches on a method's name. Adding a method = adding a module that defines a
:class:`Method` subclass with its own :class:`MethodConfig`, decorated with :func:`register`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from collections.abc import Callable

from torch import nn

from tuneforge.base.errors import UserError, did_you_mean
from tuneforge.base.recipe import MethodConfig
from tuneforge.core.methods.layout import load_plain_model

# How a task reads a plain model folder back (``run/model`` or ``run/base``); the task passes its own
# reader (multitask: encoder + heads), the default reads any transformers model by its recorded class.
PlainModelReader = Callable[[Path], nn.Module]


class Method:
    """Base class of a fine-tuning method. Subclasses override what differs."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]
    summary: ClassVar[str]
    # The learning rate `tuneforge compare` and `tuneforge plan` use for this method when the recipe's
    # own learning rate was chosen for another method (docs/methods.md says how each was picked).
    default_learning_rate: ClassVar[float] = 1e-4

    def __init__(self, config: MethodConfig) -> None:
        self.config = config

    def prepare(self, model: nn.Module) -> nn.Module:
        """Make ``model`` trainable the method's way; return the module to train."""
        return model

    def optimizer_parameters(self, model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
        """Parameters the optimizer must own (default: those trainable after ``prepare``)."""
        return ((n, p) for n, p in model.named_parameters() if p.requires_grad)

    def frozen_prefix_depth(self, num_layers: int, epochs: int) -> int:
        """How many bottom blocks (with the embeddings) stay frozen for all ``epochs``: the activation
        cache computes their output once. 0 = none (the default: something in every block trains)."""
        return 0

    def on_epoch_start(self, model: nn.Module, epoch: int) -> str | None:
        """Hook before each epoch (0-based); may return a line to print."""
        return None

    def on_optimizer_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Hook after each optimizer step (1-based ``step``), before gradients are cleared (AdaLoRA)."""

    def save(self, model: nn.Module, run_dir: Path) -> nn.Module:
        """Write ``run_dir/model`` (a plain transformers model) and any method extras.

        Returns the module that now stands for the saved model (e.g. the merged model, or the model
        loaded back from what was written); the loop checks its logits equal the trained model's.
        """
        model.save_pretrained(run_dir / "model", safe_serialization=True)
        return model

    @classmethod
    def load(cls, run_dir: Path, config: MethodConfig, read_plain: PlainModelReader = load_plain_model) -> nn.Module:
        """The trained model of a run folder this method wrote, in eval mode (default: ``run_dir/model``).

        ``read_plain`` reads a plain model folder; the run's task supplies it (the method never learns which
        task it serves). Methods that cannot be merged into a plain model override this to rebuild base + adapter.
        """
        model_dir = Path(run_dir) / "model"
        if not (model_dir / "config.json").is_file():
            raise UserError(f"{run_dir}: has no trained model (model/ is missing; did the run finish? see run.json)")
        return read_plain(model_dir).eval()


_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method to the registry under ``cls.name``."""
    if cls.name in _REGISTRY:
        raise RuntimeError(f"method {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    """Registered method names, in registration order."""
    return list(_REGISTRY)


def method_spec(name: str) -> type[Method]:
    """The Method class registered as ``name``."""
    if name not in _REGISTRY:
        raise UserError(f"unknown method '{name}'{did_you_mean(name, _REGISTRY)}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def method_configs() -> dict[str, type[MethodConfig]]:
    """Each registered method's config class by name: the catalogue the recipe validates ``method:`` against."""
    return {name: spec.config_class for name, spec in _REGISTRY.items()}


def build_method(config: MethodConfig) -> Method:
    """Instantiate the method a validated config names."""
    return method_spec(config.name)(config)
