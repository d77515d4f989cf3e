"""Dynamic INT8 quantization: weights stored as int8 with one scale per output channel, activations quantized
on the fly per batch; the layers whose quantization would cost quality stay fp32.

Which layers stay fp32 (:func:`plan_quantization`):

- the classification head (every ``nn.Linear`` of :func:`tuneforge.core.anatomy.describe`'s head: the
  classifier and, for BERT-style models, the pooler): few weights, and every logit goes through them;
- the layers a per-layer sensitivity pass finds sensitive: each remaining ``nn.Linear`` is quantized *alone*
  and the mean |Δlogit| it causes on a few validation rows is measured; a layer whose score is more than
  :data:`OUTLIER_FACTOR` times the median layer's is kept (at most :data:`MAX_KEPT_FRACTION` of the layers,
  the most sensitive first). The pass compares logits only (no labels), so it cannot tune itself to the
  accuracy that the export gate then checks.

Formats:

- PyTorch / TorchScript: ``torch.ao.quantization.quantize_dynamic`` with ``per_channel_dynamic_qconfig`` on the
  planned layers (embeddings and LayerNorm stay fp32). PyTorch marks ``torch.ao.quantization`` deprecated in
  favour of torchao; it still ships and works in the pinned torch, and its warnings are silenced here.
- ONNX: ONNX Runtime's ``quantize_dynamic`` with ``per_channel=True`` (int8 weights for MatMul/Gemm, and for
  Gather, i.e. the embeddings) after ONNX Runtime's recommended pre-processing (ONNX shape inference and graph
  optimisation; its symbolic shape inference is skipped: it does not follow the torch.export graphs of the
  dynamic axes). The kept layers' MatMul/Gemm nodes are excluded: they are found by their weights, which the
  exporter stores under generated names (:func:`onnx_nodes_of`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.core.anatomy import describe

# Rows of the sensitivity pass: enough to rank ~40 layers, few enough that the pass takes seconds.
SENSITIVITY_ROWS = 64
# A layer is sensitive when quantizing it alone moves the logits this many times more than the median layer.
OUTLIER_FACTOR = 4.0
# At most this share of the model's Linear layers stays fp32 for sensitivity (the size gain must remain).
MAX_KEPT_FRACTION = 0.1


@dataclass
class QuantizationPlan:
    """Which ``nn.Linear`` layers become INT8 and which stay fp32 (and why), with the sensitivity scores."""

    quantized: list[str]
    kept: dict[str, str]
    sensitivity: dict[str, float] = field(default_factory=dict)
    rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        """What ``export_report.json`` records under ``quantization``."""
        ranked = sorted(self.sensitivity.items(), key=lambda item: -item[1])
        scores = list(self.sensitivity.values())
        return {
            "weights": "int8, one scale per output channel (per-channel); activations int8 per batch (dynamic)",
            "quantized_layers": len(self.quantized),
            "kept_fp32": self.kept,
            "sensitivity": {
                "measure": "mean |Δlogit| when this layer alone is quantized",
                "rows": self.rows,
                "median": float(np.median(scores)) if scores else None,
                "outlier_factor": OUTLIER_FACTOR,
                "max_kept_fraction": MAX_KEPT_FRACTION,
                "most_sensitive": {name: round(score, 6) for name, score in ranked[:8]},
            },
        }


def linear_layers(model) -> list[str]:
    """Names of every ``nn.Linear`` module of ``model``, in module order."""
    import torch

    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def head_layers(model) -> list[str]:
    """The ``nn.Linear`` modules of the model's head (classifier, pooler): their weights are in the anatomy's head."""
    head = set(describe(model).head)
    return [name for name in linear_layers(model) if f"{name}.weight" in head]


def dynamic_int8(module):
    """One ``nn.Linear`` as PyTorch's dynamically quantized Linear with per-channel int8 weights."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig

    module = copy.copy(module)
    module.qconfig = per_channel_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DynamicLinear.from_float(module)


def _replace(model, name: str, module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, module)


def plan_quantization(model, batches: list[dict[str, Any]]) -> QuantizationPlan:
    """Keep the head fp32, measure each other Linear layer's sensitivity on ``batches`` (model inputs as
    tensors), keep the outliers fp32 (module docstring); ``model`` is not changed."""
    import torch

    work = copy.deepcopy(model).eval()
    head = head_layers(work)
    kept = {name: "classification head" for name in head}
    candidates = [name for name in linear_layers(work) if name not in kept]

    def logits() -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([work(**batch).logits.float() for batch in batches])

    reference = logits()
    sensitivity: dict[str, float] = {}
    for name in candidates:
        original = work.get_submodule(name)
        _replace(work, name, dynamic_int8(original))
        try:
            sensitivity[name] = float((logits() - reference).abs().mean())
        finally:
            _replace(work, name, original)
    median = float(np.median(list(sensitivity.values()))) if sensitivity else 0.0
    limit = int(MAX_KEPT_FRACTION * len(candidates))
    outliers = sorted((name for name, score in sensitivity.items() if score > OUTLIER_FACTOR * median > 0),
                      key=lambda name: -sensitivity[name])[:limit]
    for name in outliers:
        kept[name] = (f"sensitive: quantized alone it moves the logits by {sensitivity[name]:.3g} on average, "
                      f"{sensitivity[name] / median:.1f}x the median layer")
    return QuantizationPlan(quantized=[name for name in candidates if name not in kept], kept=kept,
                            sensitivity=sensitivity, rows=int(reference.shape[0]))


def quantize_torch(model, plan: QuantizationPlan | None = None):
    """An INT8 copy of ``model``: the plan's layers (default: every Linear but the head) dynamically quantized
    with per-channel weights; ``model`` itself is unchanged."""
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig

    layers = plan.quantized if plan is not None else [n for n in linear_layers(model) if n not in head_layers(model)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(),
                                                      {name: per_channel_dynamic_qconfig for name in layers},
                                                      dtype=torch.qint8)


def _weight_key(array: np.ndarray) -> str:
    array = np.ascontiguousarray(array, dtype=np.float32)
    return f"{array.shape}:{hashlib.sha256(array.tobytes()).hexdigest()}"


def onnx_nodes_of(path: Path, layer_weights: dict[str, np.ndarray]) -> tuple[dict[str, str], list[str]]:
    """The MatMul/Gemm nodes of the ONNX graph at ``path`` that compute the layers whose ``nn.Linear`` weights
    are ``layer_weights`` (``{layer: [out, in] array}``), found by their weight (stored as is, or transposed,
    under a name the exporter generates). Returns ``{layer: node name}`` and the layers not found."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {tensor.name: tensor for tensor in graph.initializer}
    by_weight: dict[str, str] = {}
    for node in graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in weights:
            by_weight.setdefault(_weight_key(numpy_helper.to_array(weights[node.input[1]])), node.name)
    found, missing = {}, []
    for name, weight in layer_weights.items():
        node = by_weight.get(_weight_key(weight.T)) or by_weight.get(_weight_key(weight))
        if node is None:
            missing.append(name)
        else:
            found[name] = node
    return found, missing


def kept_weights(model, plan: QuantizationPlan) -> dict[str, np.ndarray]:
    """The weights of the layers ``plan`` keeps in fp32, to find them in an ONNX graph."""
    return {name: model.get_submodule(name).weight.detach().float().cpu().numpy() for name in plan.kept}


def quantize_onnx(source: Path, destination: Path, keep: dict[str, np.ndarray] | None = None) -> list[str]:
    """Write an INT8 (per-channel weights) version of the ONNX model ``source`` to ``destination``, leaving the
    nodes of the ``keep`` layers (``{layer: its nn.Linear weight}``) in fp32. Returns the layers to keep whose
    node was not found (they were quantized)."""
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
            # found in the pre-processed graph: its optimisation may fuse and rename nodes
            nodes, missing = onnx_nodes_of(prepared, keep or {})
            quantize_dynamic(str(prepared), str(destination), weight_type=QuantType.QInt8, per_channel=True,
                             nodes_to_exclude=sorted(nodes.values()))
    finally:
        root.setLevel(level)
    return missing
