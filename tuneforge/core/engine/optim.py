"""Optimizer parameter groups (discriminative and layer-wise learning rates, weight decay) and schedules."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from tuneforge.core.anatomy import describe
from tuneforge.base.recipe import TrainConfig


def learning_rate_for(name: str, depth_of: dict[str, int], num_layers: int, config: TrainConfig) -> float:
    """LR of one parameter: the head at ``head_learning_rate`` (default: ``learning_rate``); the top block at
    ``learning_rate``, each block below multiplied by ``layer_lr_decay``, the embeddings one step below the
    bottom block."""
    depth = depth_of.get(name)
    if depth is None:  # head
        return config.head_learning_rate or config.learning_rate
    return config.learning_rate * config.layer_lr_decay ** (num_layers - 1 - depth)


def build_optimizer(model: nn.Module, parameters: Iterable[tuple[str, nn.Parameter]],
                    config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over ``parameters``, grouped by learning rate; biases and norm weights get no weight decay."""
    anatomy = describe(model)
    depth_of = {name: -1 for name in anatomy.embeddings}
    for depth, names in enumerate(anatomy.layers):
        depth_of.update({name: depth for name in names})
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, parameter in parameters:
        lr = learning_rate_for(name, depth_of, anatomy.num_layers, config)
        decay = config.weight_decay if parameter.ndim >= 2 else 0.0
        groups.setdefault((lr, decay), []).append(parameter)
    param_groups = [{"params": params, "lr": lr, "weight_decay": decay} for (lr, decay), params in groups.items()]
    return torch.optim.AdamW(param_groups, lr=config.learning_rate, **adamw_kernel(
        [p for params in groups.values() for p in params]))


def adamw_kernel(parameters: list[nn.Parameter]) -> dict[str, bool]:
    """The fused AdamW kernel where torch has one for the parameters' device, else the foreach one.

    Fused is one pass over the weights and their states; foreach runs each update as a separate pass and holds
    one more copy of the trainable weights during the step. On a 2-core CPU a step over MiniLM's 22.7M
    parameters takes 29 ms fused against 121 ms foreach (bench/optimizer_step.py; docs/speed.md). The Trainer
    uses the fused kernel by default too (``adamw_torch_fused`` for torch >= 2.8).
    """
    if parameters and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in parameters):
        return {"fused": True}
    return {"foreach": True}


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """Warmup over ``warmup_ratio`` of the optimizer steps, then linear/cosine decay or constant."""
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[config.scheduler]
    warmup = int(round(config.warmup_ratio * total_steps))
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max(total_steps, 1))


def take_optimizer_step(optimizer: torch.optim.Optimizer, scheduler, method, model: nn.Module,
                        max_grad_norm: float | None, step: int, total_steps: int,
                        scaler: torch.amp.GradScaler | None = None) -> None:
    """The optimizer step that ends an accumulation window: unscale (fp16's GradScaler), clip the gradients to
    ``max_grad_norm``, step, the method's hook for step ``step`` (1-based) of ``total_steps``, the schedule,
    then clear the gradients."""
    if scaler:
        scaler.unscale_(optimizer)
    if max_grad_norm:
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"] if p.grad is not None],
                                       max_grad_norm)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    method.on_optimizer_step(model, step, total_steps)
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
