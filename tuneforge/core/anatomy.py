"""Where things are inside a transformers model: embeddings, the stack of blocks, the head.

Methods (freeze, gradual unfreezing) and the optimizer (layer-wise learning rates) need to know
which parameters belong to which depth, for any model family. Rather than a table per
architecture, the block stack is found as the largest ``nn.ModuleList`` of the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Anatomy:
    """Parameter names grouped by depth, bottom to top."""

    embeddings: list[str]
    layers: list[list[str]]
    head: list[str]
    embedding_module: str = ""
    layer_modules: tuple[str, ...] = ()

    @property
    def num_layers(self) -> int:
        return len(self.layers)


def describe(model: nn.Module) -> Anatomy:
    """Group ``model``'s parameter names into embeddings, blocks (bottom -> top) and head.

    The head is everything that is neither an embedding nor inside a block: the classifier and
    what sits between the last block and it (pooler, final norm).
    """
    stacks = [(name, module) for name, module in model.named_modules()
              if isinstance(module, nn.ModuleList) and len(module) > 0]
    if not stacks:
        raise ValueError(f"{type(model).__name__}: found no stack of layers (nn.ModuleList)")
    stack_name, stack = max(stacks, key=lambda item: sum(p.numel() for p in item[1].parameters()))
    prefix = f"{stack_name}." if stack_name else ""
    layers: list[list[str]] = [[] for _ in range(len(stack))]
    embeddings: list[str] = []
    head: list[str] = []
    for name, _ in model.named_parameters():
        if name.startswith(prefix):
            index = int(name[len(prefix):].split(".", 1)[0])
            layers[index].append(name)
        elif "embed" in name:
            embeddings.append(name)
        else:
            head.append(name)
    embedding_module = _common_module_path(embeddings)
    return Anatomy(embeddings=embeddings, layers=layers, head=head, embedding_module=embedding_module,
                   layer_modules=tuple(f"{prefix}{i}" for i in range(len(stack))))


def _common_module_path(parameter_names: list[str]) -> str:
    """The deepest module holding every given parameter (``bert.embeddings``, ``model.embed_tokens``)."""
    if not parameter_names:
        return ""
    paths = [name.split(".")[:-1] for name in parameter_names]
    common: list[str] = []
    for parts in zip(*paths):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def frozen_blocks_to_eval(model: nn.Module) -> None:
    """Put the embeddings and every block whose parameters are all frozen in eval mode (no dropout).

    A frozen feature extractor should compute the same features every time; it is also what makes
    the activation cache (:mod:`tuneforge.core.engine.activation_cache`) exact.
    """
    anatomy = describe(model)
    parameters = dict(model.named_parameters())
    for path, names in [(anatomy.embedding_module, anatomy.embeddings),
                        *zip(anatomy.layer_modules, anatomy.layers)]:
        if path and names and not any(parameters[n].requires_grad for n in names):
            model.get_submodule(path).eval()


def set_trainable(model: nn.Module, names: set[str]) -> None:
    """Make exactly the parameters in ``names`` trainable."""
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name in names)
