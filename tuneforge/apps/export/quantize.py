"""Dynamic INT8 quantization: weights stored as int8, activations quantized on the fly per batch.

- PyTorch: ``torch.ao.quantization.quantize_dynamic`` on every ``nn.Linear`` (embeddings and LayerNorm
  stay fp32). PyTorch marks ``torch.ao.quantization`` deprecated in favour of torchao; it still ships and
  works in the pinned torch, and its warnings are silenced here.
- ONNX: ONNX Runtime's ``quantize_dynamic`` (int8 weights for MatMul and Gather, i.e. the embeddings too)
  after ONNX Runtime's recommended pre-processing (ONNX shape inference and graph optimisation; its symbolic
  shape inference is skipped: it does not follow the torch.export graphs of the dynamic axes).
"""

from __future__ import annotations

import copy
import logging
import tempfile
import warnings
from pathlib import Path


def quantize_torch(model):
    """An INT8 copy of ``model`` (Linear layers dynamically quantized); ``model`` itself is unchanged."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear},
                                                      dtype=torch.qint8)


def quantize_onnx(source: Path, destination: Path) -> None:
    """Write an INT8 version of the ONNX model ``source`` to ``destination``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs advice through the root logger
    try:
        with tempfile.TemporaryDirectory() as scratch, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = Path(scratch) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            quantize_dynamic(str(prepared), str(destination), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)
