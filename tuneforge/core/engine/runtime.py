"""Device, precision, threads and seeds: decided once, before the model is loaded."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from tuneforge.base.recipe import TrainConfig
from tuneforge.base.errors import UserError


@dataclass(frozen=True)
class Runtime:
    """Where and how the tensors run."""

    device: torch.device
    autocast_dtype: torch.dtype | None  # None = full fp32
    use_grad_scaler: bool
    threads: int

    @property
    def precision_name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def resolve_precision(precision: str, cuda: bool) -> tuple[torch.dtype | None, bool]:
    """Autocast dtype and whether a GradScaler is needed. ``auto`` is fp32 on CPU: bf16 matmuls on CPUs
    without native bf16 units are ~100x slower than fp32, so it is never chosen unmeasured."""
    if precision == "auto":
        if not cuda:
            return None, False
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    if precision == "fp16":
        if not cuda:
            raise UserError("train.precision: fp16 needs a CUDA GPU (there is none here); use fp32 or auto")
        return torch.float16, True
    if precision == "bf16":
        return torch.bfloat16, False
    return None, False


def setup_runtime(config: TrainConfig) -> Runtime:
    """Pick device and precision, set torch's thread count and seed every generator."""
    cuda = torch.cuda.is_available()
    autocast_dtype, scaler = resolve_precision(config.precision, cuda)
    threads = config.num_threads or physical_cores()
    if not cuda:
        torch.set_num_threads(threads)
    seed_everything(config.seed)
    return Runtime(device=torch.device("cuda" if cuda else "cpu"), autocast_dtype=autocast_dtype,
                   use_grad_scaler=scaler, threads=threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
