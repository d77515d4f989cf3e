"""TorchScript export: the classifier traced with ``torch.jit.trace`` on a padded batch of real rows.

The traced graph takes ``input_ids``, ``attention_mask`` (and ``token_type_ids`` where the model uses them)
positionally, each ``[batch, sequence]`` of any size, and returns the logits. PyTorch keeps TorchScript
in maintenance mode; it still loads with plain ``torch.jit.load`` and needs no tuneforge.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from tuneforge.apps.export.onnx import logits_module


def export_torchscript(model, example: dict[str, np.ndarray], input_names: list[str], path: Path) -> None:
    import torch

    wrapped = logits_module(model, input_names)
    args = tuple(torch.from_numpy(example[name]) for name in input_names)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings about shape checks that hold for every input
        traced = torch.jit.trace(wrapped, args, strict=False, check_trace=False)
        torch.jit.save(traced, str(path))

