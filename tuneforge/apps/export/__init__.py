"""Shipping a trained run: export, parity, quantization, benchmarks (``tuneforge export``), and serving it.

This package owns everything between a finished run folder and a model that runs without tuneforge:

- :mod:`~tuneforge.apps.export.runtime` — one inference interface over a run folder (PyTorch) and an export
  folder (ONNX Runtime, TorchScript, safetensors); ``load_classifier`` is what ``tuneforge serve`` uses.
- :mod:`~tuneforge.apps.export.onnx` — ONNX export through ``torch.onnx`` (the torch.export-based exporter)
  with dynamic batch and sequence axes.
- :mod:`~tuneforge.apps.export.quantize` — dynamic INT8: PyTorch ``quantize_dynamic`` on Linear layers, ONNX
  Runtime dynamic quantization.
- :mod:`~tuneforge.apps.export.parity` — exported model vs the run's PyTorch model on validation rows:
  max |Δlogit| and prediction agreement; below the threshold the export fails.
- :mod:`~tuneforge.apps.export.latency` — file size, p50/p95 latency at batch 1, rows/s at batch 32 and
  test accuracy, measured on this CPU.
- :mod:`~tuneforge.apps.export.pipeline` — ``export_run``: the command's steps and ``export_report.json``.
- :mod:`~tuneforge.apps.export.language_model` — language-model runs (sft, causal-lm, masked-lm) to
  safetensors + tokenizer, checked on token logits.

What a run exports to is its task's ``export_formats``; other formats and tasks fail with "not supported yet".
``tuneforge serve`` serves classification runs and their exports only.
"""

from tuneforge.apps.export.pipeline import export_run
from tuneforge.apps.export.runtime import FORMATS, REPORT_NAME, TextClassifier, load_classifier

__all__ = ["FORMATS", "REPORT_NAME", "TextClassifier", "export_run", "load_classifier"]
