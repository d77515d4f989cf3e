"""Running the loop on several processes through accelerate (DDP); a no-op for a single process.

``accelerate launch -m tuneforge train RECIPE`` (or ``torchrun -m tuneforge train ...``) starts one process
per device. Each builds the same model, the same batch order (same seed) and the same *global* batches of
``train.batch_size x processes`` examples; each process trains on its contiguous share of every global
batch, and DDP averages the gradients. Each share's loss is weighted by ``share / (global / processes)`` so
the averaged gradient is the global batch's mean even when the last batch does not split evenly: two
processes at ``batch_size: 8`` take the same steps as one process at ``batch_size: 16``.

Only rank 0 writes the run folder (config, metrics, checkpoints, model); every rank validates on the whole
validation set (the metrics are identical on each). accelerate creates the process group (NCCL on GPUs,
gloo on CPUs) and wraps the model in DistributedDataParallel; tuneforge adds no distributed layer of its own.

FSDP (``distributed_type: FSDP`` with ``fsdp_version: 2`` in the accelerate config): the same batches and loss
weights, but each transformer block and then the whole model are sharded with torch's FSDP2
(``torch.distributed.fsdp.fully_shard``): every process holds 1/N of each weight, gradient and optimizer state,
and gathers a block's weights only while that block runs. The model is sharded *before* the optimizer is built,
so the optimizer (tuneforge's own AdamW with its learning-rate groups) owns the shards. At the end every process
sends its shards and rank 0 rebuilds the whole model, which it saves and gates as usual. accelerate's own FSDP2
preparation is not used: it needs ``accelerator.prepare(model, optimizer)`` and refuses CPUs (it keeps
``MULTI_CPU``), and the sharding here is a few lines of torch. Sharded runs write no checkpoints yet (each
process holds only its shard), so ``--resume`` of an FSDP run is refused. DeepSpeed and Megatron-LM are refused
(docs/scaling-out.md says why).
"""

from __future__ import annotations

import copy
import functools
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tuneforge.base.errors import UserError
from tuneforge.core.anatomy import describe

# What `accelerate launch` sets for engines tuneforge does not train with, and why (docs/scaling-out.md).
UNSUPPORTED_ENGINES = {
    "ACCELERATE_USE_DEEPSPEED": ("DeepSpeed", "DeepSpeed's engine owns the optimizer, the backward pass and the "
                                 "checkpoints (engine.backward, engine.step), which tuneforge's loop does not hand "
                                 "over, and it could not be tested here (no CUDA); use FSDP "
                                 "(examples/accelerate/fsdp.yaml), which shards weights, gradients and optimizer "
                                 "state like ZeRO-3"),
    "ACCELERATE_USE_MEGATRON_LM": ("Megatron-LM", "it needs Megatron's own model classes and CUDA"),
}


def flag(variable: str, default: str = "false") -> bool:
    """An accelerate launcher flag (``"true"``/``"false"``) from the environment."""
    return os.environ.get(variable, default).lower() in ("1", "true", "yes")


def fsdp_requested() -> bool:
    """True when ``accelerate launch`` was given ``distributed_type: FSDP``."""
    return flag("ACCELERATE_USE_FSDP")


def check_fsdp_settings() -> None:
    """FSDP as tuneforge runs it: version 2, parameters on the training device, tuneforge's own gradient
    checkpointing. Anything else stops here with one line naming the accelerate setting."""
    version = os.environ.get("FSDP_VERSION", "1")
    if version != "2":
        raise UserError(f"accelerate launch with FSDP version {version}: not supported yet; tuneforge shards with "
                        "FSDP2: set fsdp_config.fsdp_version: 2 (examples/accelerate/fsdp.yaml)")
    if flag("FSDP_OFFLOAD_PARAMS"):
        raise UserError("accelerate launch with FSDP fsdp_offload_params: true: not supported yet; set it to false")
    if flag("FSDP_CPU_RAM_EFFICIENT_LOADING"):  # transformers would then load real weights on rank 0 only
        raise UserError("accelerate launch with FSDP fsdp_cpu_ram_efficient_loading: true: not supported yet; set it "
                        "to false (every process loads the model, then keeps only its shard)")
    if flag("FSDP_ACTIVATION_CHECKPOINTING"):
        raise UserError("accelerate launch with FSDP fsdp_activation_checkpointing: true: not supported yet; set it "
                        "to false and use the recipe's train.gradient_checkpointing: true")


def meta_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose parameters are on the meta device (no memory; ties kept) and whose buffers are
    real: the frame rank 0 rebuilds the whole model into after sharded training."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
            for p in model.parameters()}
    return copy.deepcopy(model, memo)


def launched_distributed() -> bool:
    """True when this process was started by a multi-process launcher (accelerate launch, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def trainable_names(model: nn.Module) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


@dataclass
class Distributed:
    """This process's place among the training processes. ``accelerator`` is None for a single process."""

    accelerator: Any = None
    sharded: bool = False  # FSDP2: each process holds a shard of every weight (see the module docstring)
    _trainable: set[str] = field(default_factory=set)  # what DDP synchronises (set by wrap)
    _frame: nn.Module | None = None  # FSDP, rank 0: the model's meta copy that unsharded() fills

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes the run folder."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def device(self, default: torch.device) -> torch.device:
        return self.accelerator.device if self.enabled else default

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module to call in the training step: DDP around ``model`` when distributed, else ``model``."""
        if not self.enabled:
            return model
        self._trainable = trainable_names(model)
        if self.sharded:
            return self._fully_shard(model)
        return self.accelerator.prepare_model(model, device_placement=True)

    def _fully_shard(self, model: nn.Module) -> nn.Module:
        """FSDP2 in place: each block its own unit (its weights gathered only while it runs), then the rest."""
        from torch.distributed.fsdp import fully_shard

        self._frame = meta_copy(model) if self.is_main else None
        reshard = flag("FSDP_RESHARD_AFTER_FORWARD", "true")
        for path in describe(model).layer_modules:
            fully_shard(model.get_submodule(path), reshard_after_forward=reshard)
        fully_shard(model)
        return model

    def unsharded(self, model: nn.Module) -> nn.Module:
        """The whole model to save: ``model`` itself unless sharded; with FSDP every process sends its shards
        (call it on all of them) and rank 0 gets a plain model holding the full weights (others: ``model``)."""
        if not self.sharded:
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.is_main:
            return model
        whole, self._frame = self._frame, None
        whole.load_state_dict(state, assign=True, strict=True)
        if hasattr(whole, "tie_weights"):
            whole.tie_weights()
        if getattr(whole, "is_gradient_checkpointing", False):
            whole.gradient_checkpointing_disable()
        return whole.to(self.accelerator.device).eval()

    @property
    def writes_checkpoints(self) -> bool:
        """Rank 0 writes checkpoints, except in a sharded run (each process holds only its shard)."""
        return self.is_main and not self.sharded

    def check_can_resume(self) -> None:
        """Refuse ``--resume`` in a sharded run: a checkpoint holds whole weights, not this process's shard."""
        if self.sharded:
            raise UserError("--resume under FSDP: not supported yet (checkpoints hold whole weights, not shards; "
                            "FSDP runs write none); resume under DDP (examples/accelerate/ddp-cpu.yaml) or in one "
                            "process")

    def check_trainable_unchanged(self, model: nn.Module) -> None:
        """DDP synchronises the gradients of the parameters that trained when it wrapped the model; a method
        that thaws more later (gradual unfreezing) would train them apart on each process, so it stops here."""
        if self.enabled and trainable_names(model) != self._trainable:
            raise UserError("this method changes which parameters train during the run (e.g. gradual "
                            "unfreezing); that is not supported yet under a distributed launch: train it in one "
                            "process, or use full, freeze or lora")

    def shard(self, batches: list[list[int]]) -> tuple[list[list[int]], list[float] | None]:
        """This process's share of each global batch and the weight of its loss (None: single process).

        A final global batch with fewer examples than processes is dropped (a process cannot train on none)."""
        if not self.enabled:
            return batches, None
        world, shares, weights = self.world_size, [], []
        for batch in batches:
            if len(batch) < world:
                continue
            bounds = [len(batch) * part // world for part in range(world + 1)]
            share = batch[bounds[self.rank]:bounds[self.rank + 1]]
            shares.append(share)
            weights.append(len(share) * world / len(batch))
        return shares, weights

    def all_true(self, flag: bool) -> bool:
        """``flag`` and-ed across processes (every process must take the same branch around a collective)."""
        if not self.enabled:
            return flag
        value = torch.tensor([0.0 if flag else 1.0], device=self.accelerator.device)
        return float(self.accelerator.reduce(value, reduction="sum")) == 0.0

    def any_true(self, flag: bool) -> bool:
        return not self.all_true(not flag)

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (picklable objects: a path, an error message)."""
        if not self.enabled:
            return value
        from accelerate.utils import broadcast_object_list

        holder = [value]
        broadcast_object_list(holder, from_process=0)
        return holder[0]

    def wait(self) -> None:
        if self.enabled:
            self.accelerator.wait_for_everyone()


@functools.lru_cache(maxsize=1)
def distributed() -> Distributed:
    """This process's :class:`Distributed` (one per process; the process group is created on first use)."""
    if not launched_distributed():
        return Distributed()
    for variable, (engine, reason) in UNSUPPORTED_ENGINES.items():
        if flag(variable):
            raise UserError(f"accelerate launch with {engine}: not supported yet: {reason}; tuneforge trains with "
                            "DDP or FSDP2; see docs/scaling-out.md")
    sharded = fsdp_requested()
    if sharded:
        check_fsdp_settings()
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    # tuneforge's train.precision decides autocast; accelerate must not add its own.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
    supported = (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU, DistributedType.NO, DistributedType.FSDP)
    if accelerator.distributed_type not in supported:
        raise UserError(f"accelerate launch with {accelerator.distributed_type.value}: not supported yet; tuneforge "
                        "trains with DDP (distributed_type MULTI_GPU, or --multi_gpu on CPUs) or FSDP2; see "
                        "docs/scaling-out.md")
    return Distributed(accelerator, sharded=sharded)
