"""Prefix tuning (Li & Liang 2021), our own: trained key/value prefixes in every self-attention layer.

PEFT's prefix tuning does not work for sequence classifiers with this transformers ("Model does not
support past key values which are required for prefix tuning": PEFT looks for a ``past_key_values``
argument the models no longer have; tests/test_methods_prefix.py shows it), so tuneforge does it itself.

How: every self-attention module gets a forward pre-hook that hands it a tiny cache object whose
``update(key, value)`` — which transformers' attention calls on its keys and values — returns them with
``num_virtual_tokens`` trained keys/values in front, and that widens the attention mask by as many
always-visible columns (for causal models an explicit causal mask with the prefix visible to every
position). Queries, positions and the pooled token are untouched. Prefixes are initialised from the
model's own keys/values of random vocabulary tokens (``init: vocab``, Li & Liang's finding that real
activations train better than noise) or randomly; ``projection: true`` reparameterises them through
an MLP during training (the paper's trick for stability); the saved adapter holds the resulting prefixes
only. The body is frozen; the prefixes and the head train. Not mergeable: the run keeps base + adapter.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from tuneforge.base.errors import UserError
from tuneforge.core.methods.injection import InjectedMethod, layer_stack
from tuneforge.core.methods.registry import MethodConfig, register

# (key, value) projection names of the self-attention modules we know how to extend.
KEY_VALUE_NAMES = (("key", "value"), ("k_proj", "v_proj"))


class PrefixMethodConfig(MethodConfig):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Trained key/value positions per layer.")
    init: Literal["vocab", "random"] = Field(
        "vocab", description="vocab: the model's own keys/values of random tokens; random: small noise.")
    projection: bool = Field(False, description="Reparameterise the prefixes through an MLP while training.")
    projection_hidden: int = Field(512, ge=1, description="Hidden width of that MLP.")

    @model_validator(mode="after")
    def _init_without_projection(self) -> "PrefixMethodConfig":
        if self.projection and self.init == "vocab" and "init" in self.model_fields_set:
            raise ValueError("init: vocab applies to plain prefixes; with projection: true the MLP starts randomly "
                             "(set init: random or projection: false)")
        return self


class PrefixEncoder(nn.Module):
    """The prefixes of all layers: ``(layers, 2, tokens, width)`` (key and value), direct or through an MLP."""

    def __init__(self, layers: int, tokens: int, width: int, projection_hidden: int | None) -> None:
        super().__init__()
        self.shape = (layers, 2, tokens, width)
        if projection_hidden:
            self.embedding = nn.Parameter(torch.randn(tokens, width) * 0.02)
            self.mlp = nn.Sequential(nn.Linear(width, projection_hidden), nn.Tanh(),
                                     nn.Linear(projection_hidden, layers * 2 * width))
        else:
            self.prefix = nn.Parameter(torch.randn(self.shape) * 0.02)

    def forward(self) -> torch.Tensor:
        if hasattr(self, "mlp"):
            layers, two, tokens, width = self.shape
            return self.mlp(self.embedding).view(tokens, layers, two, width).permute(1, 2, 0, 3)
        return self.prefix


class _Holder:
    """The prefixes of the current forward pass, computed once per model call (not a module: no weights).

    They stay set after the call: gradient checkpointing re-runs the blocks during backward and must see the
    very same tensor."""

    def __init__(self, encoder: PrefixEncoder) -> None:
        self.encoder = encoder
        self.current: torch.Tensor | None = None

    def prefixes(self) -> torch.Tensor:
        if self.current is None:  # a block called before the model ever was
            self.current = self.encoder()
        return self.current


class _PrefixKeyValues:
    """Stands in for a transformers cache: ``update`` prepends the layer's prefix keys/values.

    A cache the model made for itself (decoders build an empty one per call) still receives the
    example's own keys/values; the prefixes are never stored in it.
    """

    def __init__(self, key: torch.Tensor, value: torch.Tensor, inner=None) -> None:
        self.key, self.value, self.inner = key, value, inner

    def update(self, key_states, value_states, *args, **kwargs):
        if self.inner is not None:
            key_states, value_states = self.inner.update(key_states, value_states, *args, **kwargs)
        return (torch.cat([self.key.to(key_states.dtype), key_states], dim=2),
                torch.cat([self.value.to(value_states.dtype), value_states], dim=2))


def _compute_prefixes(holder: _Holder, module, args) -> None:
    holder.current = holder.encoder()


def _extend_mask(mask: torch.Tensor | None, tokens: int, query_length: int, causal: bool,
                 device: torch.device) -> torch.Tensor | None:
    if mask is None:
        if not causal:
            return None  # no padding, bidirectional: every position (prefix included) is visible
        visible = torch.ones(query_length, query_length, dtype=torch.bool, device=device).tril()
        return torch.cat([torch.ones(query_length, tokens, dtype=torch.bool, device=device), visible], dim=1)[None, None]
    if mask.dim() != 4:
        raise UserError(f"method prefix: not supported yet for attention masks of shape {tuple(mask.shape)}")
    pad_shape = (*mask.shape[:-1], tokens)
    pad = (torch.ones(pad_shape, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool
           else torch.zeros(pad_shape, dtype=mask.dtype, device=mask.device))
    return torch.cat([pad, mask], dim=-1)


def _add_prefix(holder: _Holder, layer: int, heads: int, head_dim: int, cache_name: str, causal: bool,
                module, args, kwargs):
    hidden = args[0] if args else kwargs["hidden_states"]
    batch, length = hidden.shape[0], hidden.shape[1]
    inner = kwargs.get(cache_name)
    if inner is not None and inner.get_seq_length(getattr(module, "layer_idx", None) or 0) > 0:
        raise UserError("method prefix: not supported yet with a filled key/value cache (generation)")
    prefix = holder.prefixes()[layer]  # (2, tokens, width)
    tokens = prefix.shape[1]
    key, value = (prefix[i].view(tokens, heads, head_dim).transpose(0, 1).unsqueeze(0).expand(batch, -1, -1, -1)
                  for i in (0, 1))
    kwargs[cache_name] = _PrefixKeyValues(key, value, inner)
    kwargs["attention_mask"] = _extend_mask(kwargs.get("attention_mask"), tokens, length, causal, hidden.device)
    return args, kwargs


def self_attentions(model: nn.Module) -> list[tuple[nn.Module, nn.Linear, nn.Linear, str]]:
    """(attention module, key projection, value projection, cache argument name) of every block."""
    found = []
    for block in layer_stack(model):
        match = None
        for module in block.modules():
            for key_name, value_name in KEY_VALUE_NAMES:
                key, value = getattr(module, key_name, None), getattr(module, value_name, None)
                if not (isinstance(key, nn.Linear) and isinstance(value, nn.Linear)):
                    continue
                parameters = inspect.signature(module.forward).parameters
                cache_name = next((n for n in ("cache", "past_key_values") if n in parameters), None)
                if cache_name and "attention_mask" in parameters:
                    match = (module, key, value, cache_name)
                    break
            if match:
                break
        if match is None:
            raise UserError(f"method prefix: not supported yet for {type(model).__name__}: its blocks have no "
                            "self-attention that takes a key/value cache (supported: BERT family, Llama family)")
        found.append(match)
    return found


def head_dim_of(attention: nn.Module, key: nn.Linear) -> int:
    for name in ("head_dim", "attention_head_size"):
        if isinstance(getattr(attention, name, None), int):
            return getattr(attention, name)
    raise UserError(f"method prefix: cannot tell the head size of {type(attention).__name__}")


@register
class PrefixTuning(InjectedMethod):
    name = "prefix"
    config_class = PrefixMethodConfig
    summary = "trained key/value prefixes in every attention layer (ours; PEFT's fails on classifiers)"
    default_learning_rate = 1e-2

    def attach(self, model: nn.Module, initialise: bool) -> None:
        config = self.config
        attentions = self_attentions(model)
        widths = {key.out_features for _, key, _, _ in attentions}
        if len(widths) != 1:
            raise UserError("method prefix: not supported yet for models whose layers differ in key width")
        width = widths.pop()
        use_projection = config.projection and initialise
        reference = next(model.parameters())
        encoder = PrefixEncoder(len(attentions), config.num_virtual_tokens, width,
                                config.projection_hidden if use_projection else None)
        if initialise and not use_projection and config.init == "vocab":
            encoder.prefix.data.copy_(vocab_prefixes(model, attentions, config.num_virtual_tokens))
        model.tf_prefix = encoder.to(device=reference.device, dtype=reference.dtype)
        holder = _Holder(model.tf_prefix)
        model.register_forward_pre_hook(partial(_compute_prefixes, holder))
        for layer, (attention, key, _, cache_name) in enumerate(attentions):
            head_dim = head_dim_of(attention, key)
            causal = bool(getattr(attention, "is_causal", False))
            attention.register_forward_pre_hook(
                partial(_add_prefix, holder, layer, width // head_dim, head_dim, cache_name, causal), with_kwargs=True)

    def adapter_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        # The saved adapter keeps the prefixes themselves, not the MLP that produced them.
        state = {name: value for name, value in super().adapter_state(model).items()
                 if not name.startswith("tf_prefix.")}
        with torch.no_grad():
            state["tf_prefix.prefix"] = model.tf_prefix().detach()
        return state


@torch.no_grad()
def vocab_prefixes(model: nn.Module, attentions, tokens: int) -> torch.Tensor:
    """Keys/values the frozen model computes for ``tokens`` random vocabulary tokens, per layer."""
    captured: dict[int, torch.Tensor] = {}
    hooks = []
    for layer, (_, key, value, _) in enumerate(attentions):
        for index, projection in enumerate((key, value)):
            hooks.append(projection.register_forward_hook(
                lambda module, args, output, slot=(layer, index): captured.__setitem__(slot, output[0].detach())))
    vocab_size = model.get_input_embeddings().num_embeddings
    generator = torch.Generator().manual_seed(0)
    # Skip the first ids: special tokens live there in most vocabularies.
    ids = torch.randint(min(1000, vocab_size // 2), vocab_size, (1, tokens), generator=generator)
    was_training = model.training
    model.eval()
    try:
        model(input_ids=ids.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return torch.stack([torch.stack([captured[(layer, 0)], captured[(layer, 1)]])
                        for layer in range(len(attentions))]).float().cpu()
