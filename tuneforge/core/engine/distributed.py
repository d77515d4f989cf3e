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
FSDP and DeepSpeed need the optimizer built by accelerate around the sharded model, which this loop does not
do yet; such launches stop with a clear message (docs/scaling-out.md).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tuneforge.base.errors import UserError

# What `accelerate launch` sets for engines that shard the model and so need accelerate to build the optimizer.
UNSUPPORTED_ENGINES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed",
                       "ACCELERATE_USE_MEGATRON_LM": "Megatron-LM"}


def launched_distributed() -> bool:
    """True when this process was started by a multi-process launcher (accelerate launch, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def trainable_names(model: nn.Module) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


@dataclass
class Distributed:
    """This process's place among the training processes. ``accelerator`` is None for a single process."""

    accelerator: Any = None
    _trainable: set[str] = field(default_factory=set)  # what DDP synchronises (set by wrap)

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
        return self.accelerator.prepare_model(model, device_placement=True)

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
    for variable, engine in UNSUPPORTED_ENGINES.items():
        if os.environ.get(variable, "").lower() in ("1", "true", "yes"):
            raise UserError(f"accelerate launch with {engine}: not supported yet; tuneforge trains with DDP "
                            "(distributed_type MULTI_GPU; --multi_gpu on CPUs too); see docs/scaling-out.md")
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    # tuneforge's train.precision decides autocast; accelerate must not add its own.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="no")
    supported = (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU, DistributedType.NO)
    if accelerator.distributed_type not in supported:
        raise UserError(f"accelerate launch with {accelerator.distributed_type.value}: not supported yet; tuneforge "
                        "trains with DDP (distributed_type MULTI_GPU, or --multi_gpu on CPUs); see "
                        "docs/scaling-out.md")
    return Distributed(accelerator)
