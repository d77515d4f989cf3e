"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020), our own: PEFT has none.

In every block, a small module ``h + up(act(down(h)))`` (hidden -> ``bottleneck`` -> hidden, residual) is
inserted right after the output projection of the attention and/or of the feed-forward network — before
the block's own residual add and layer norm, as in Houlsby's design. ``placement: both`` is Houlsby's
(after attention and FFN), ``placement: ffn`` Pfeiffer's (after the FFN only), ``placement: attention``
after the attention only. The up projection starts at zero, so training starts from the pretrained model
exactly. The body is frozen; the adapters, the head and (``train_layer_norms: true``, as Houlsby) the
layer norms train. Adapters are non-linear, so they cannot be merged: the run keeps base + adapter.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from tuneforge.base.errors import UserError
from tuneforge.core.methods.injection import InjectedMethod, find_in_block, layer_stack
from tuneforge.core.methods.registry import MethodConfig, register

# Output projections of the attention and of the FFN inside one block, per architecture family
# (paths relative to the block). The first pair found in the model's blocks is used.
OUTPUT_PROJECTIONS: tuple[tuple[str, str, str], ...] = (
    ("BERT family (BERT, RoBERTa, MiniLM, ELECTRA, DeBERTa)", "attention.output.dense", "output.dense"),
    ("DistilBERT", "attention.out_lin", "ffn.lin2"),
    ("Llama family (Llama, Mistral, Qwen, SmolLM)", "self_attn.o_proj", "mlp.down_proj"),
    ("GPT-2", "attn.c_proj", "mlp.c_proj"),
)

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


class AdapterMethodConfig(MethodConfig):
    name: Literal["adapter"] = "adapter"
    bottleneck: int = Field(64, ge=1, description="Width of the adapter's bottleneck.")
    placement: Literal["both", "attention", "ffn"] = Field(
        "both", description="both = Houlsby (after attention and FFN); ffn = Pfeiffer; attention = after attention only.")
    activation: Literal["relu", "gelu", "silu"] = Field("gelu", description="Non-linearity inside the bottleneck.")
    train_layer_norms: bool = Field(True, description="Also train the layer norms (Houlsby does).")


class BottleneckAdapter(nn.Module):
    """``h + up(act(down(h)))``; ``up`` starts at zero so the adapter starts as the identity."""

    def __init__(self, hidden: int, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.normal_(self.down.weight, std=1e-2)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden):
        return hidden + self.up(self.act(self.down(hidden)))


def _apply_adapter(module: nn.Module, inputs, output):
    return module.tf_adapter(output)


def output_width(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    if hasattr(module, "nf"):  # transformers' Conv1D (GPT-2)
        return int(module.nf)
    raise UserError(f"adapter: cannot tell the output width of {type(module).__name__}")


def adapter_targets(model: nn.Module, placement: str) -> list[nn.Module]:
    """The output projections (attention and/or FFN) of every block after which an adapter goes."""
    blocks = layer_stack(model)
    for family, attention_path, ffn_path in OUTPUT_PROJECTIONS:
        paths = {"both": (attention_path, ffn_path), "attention": (attention_path,), "ffn": (ffn_path,)}[placement]
        found = [[find_in_block(block, (path,)) for path in paths] for block in blocks]
        if all(item is not None for row in found for item in row):
            return [item[1] for row in found for item in row]
    families = "; ".join(family for family, _, _ in OUTPUT_PROJECTIONS)
    raise UserError(f"method adapter: not supported yet for {type(model).__name__} (its blocks have none of the "
                    f"known attention/FFN output projections); supported: {families}")


@register
class Adapter(InjectedMethod):
    name = "adapter"
    config_class = AdapterMethodConfig
    summary = "bottleneck adapters after attention and/or FFN (Houlsby/Pfeiffer); frozen body"
    default_learning_rate = 1e-3

    def base_trainable(self, model: nn.Module) -> set[str]:
        names = super().base_trainable(model)
        if self.config.train_layer_norms:
            for module_name, module in model.named_modules():
                if "norm" in type(module).__name__.lower():
                    names.update(f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False))
        return names

    def attach(self, model: nn.Module, initialise: bool) -> None:
        config = self.config
        for target in adapter_targets(model, config.placement):
            reference = next(target.parameters())
            target.tf_adapter = BottleneckAdapter(output_width(target), config.bottleneck, config.activation).to(
                device=reference.device, dtype=reference.dtype)
            target.register_forward_hook(_apply_adapter)
