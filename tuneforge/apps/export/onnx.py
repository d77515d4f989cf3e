"""ONNX export through ``torch.onnx`` (the torch.export-based exporter, PyTorch's maintained default) with
dynamic batch and sequence axes. The graph takes int64 ``input_ids``, ``attention_mask`` (and
``token_type_ids`` where the model uses them), each ``[batch, sequence]``, and returns ``logits``
``[batch, labels]``."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import numpy as np

from tuneforge.base.errors import UserError

OPSET = 18
# A single .onnx file holds at most 2 GB (protobuf); larger models would need external data files.
MAX_SINGLE_FILE_BYTES = 1_800_000_000


def logits_module(model, input_names: list[str]):
    """Wrap a transformers classifier so that it takes tensors positionally and returns the logits only."""
    import torch

    class LogitsOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
            return self.model(**{name: inputs[name] for name in input_names}).logits

    return LogitsOnly().eval()


@contextlib.contextmanager
def quiet_exporter():
    """The exporter prints progress and warns about optional packages (torchvision); keep that out of the output."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def export_onnx(model, example: dict[str, np.ndarray], input_names: list[str], path: Path) -> None:
    """Write ``model`` (a transformers sequence classifier) to ``path`` as one ONNX file and check it."""
    import onnx
    import torch

    size = sum(p.numel() * p.element_size() for p in model.parameters())
    if size > MAX_SINGLE_FILE_BYTES:
        raise UserError(f"export: the model has {size / 1e9:.1f} GB of weights; ONNX export of models over 2 GB "
                        "(external data files) is not supported yet")
    wrapped = logits_module(model, input_names)
    args = tuple(torch.from_numpy(example[name]) for name in input_names)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic_shapes = {name: {0: batch, 1: sequence} for name in input_names}
    with quiet_exporter():
        program = torch.onnx.export(wrapped, args, dynamo=True, input_names=input_names, output_names=["logits"],
                                    dynamic_shapes=dynamic_shapes, opset_version=OPSET, verbose=False,
                                    optimize=True)
        program.save(str(path), external_data=False)
    onnx.checker.check_model(str(path))
    graph = onnx.load(str(path), load_external_data=False).graph
    for tensor in list(graph.input) + list(graph.output):
        dims = tensor.type.tensor_type.shape.dim
        if not (dims[0].dim_param and (tensor.name == "logits" or dims[1].dim_param)):
            raise RuntimeError(f"ONNX export: {tensor.name} has a fixed batch or sequence axis "
                               f"({[d.dim_param or d.dim_value for d in dims]}); expected dynamic axes")
