"""ONNX Runtime for a run's own export: ``tuneforge predict/eval --backend onnx``.

The ONNX session is wrapped as a module with the PyTorch classifier's call signature (``model(**inputs).logits``),
so ``--backend onnx`` goes through the very path the PyTorch model takes
(:func:`tuneforge.core.evaluate.inference.predict_probabilities`: length-sorted batches, probabilities, the
input order restored). :class:`OnnxBackend` is also what ``tuneforge export`` and ``serve`` run an ONNX export
with (:mod:`tuneforge.apps.export.runtime`).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from tuneforge.base.errors import UserError
from tuneforge.base.integrity import EXPORT_REPORT_NAME, verify_export_files

# Where `tuneforge export RUN_DIR --format onnx [--quantize int8]` writes by default, in the order
# `--backend onnx` looks: the fp32 export first (same outputs as PyTorch), else the INT8 one.
RUN_ONNX_EXPORTS = ("export/onnx", "export/onnx-int8")


def cpu_threads() -> int:
    """Threads for every backend (PyTorch's default: the physical cores), so comparisons are fair."""
    return torch.get_num_threads()


class OnnxBackend:
    """An ONNX Runtime session on the CPU: padded int64 arrays in, logits out."""

    def __init__(self, path: Path, name: str = "onnx", threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.name = name

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {n: inputs[n] for n in self.input_names})[0]


def check_export_usable(export_dir: Path, report: dict) -> None:
    """UserError unless the export finished with a passing parity check and integrity gate, and (unless
    ``--no-verify``) its files are the ones the gate checked."""
    parity = report.get("parity") or {}
    if not parity.get("passed"):
        if not parity:
            raise UserError(f"{export_dir}: this export never finished its parity check; re-export the run")
        raise UserError(f"{export_dir}: this export failed its parity check (agreement {parity['agreement']:.2%}; "
                        f"see its {EXPORT_REPORT_NAME}); it is kept for inspection only: re-export the run")
    integrity = report.get("integrity") or {}
    if integrity.get("passed") is False:
        raise UserError(f"{export_dir}: this export failed its integrity gate ({'; '.join(integrity['problems'])}); "
                        "it is kept for inspection only: re-export the run (docs/trust.md)")
    verify_export_files(export_dir)


class OnnxClassifier(nn.Module):
    """An ONNX classifier export called like a transformers sequence classifier: ``model(**inputs).logits``.

    Inputs the session does not take are ignored; ``token_type_ids`` it takes but is not given are zeros."""

    def __init__(self, backend: OnnxBackend, export_dir: Path) -> None:
        super().__init__()
        self.backend = backend
        self.export_dir = export_dir

    def forward(self, **inputs: torch.Tensor) -> SimpleNamespace:
        arrays = {name: value.cpu().numpy().astype(np.int64) for name, value in inputs.items()}
        if "token_type_ids" in self.backend.input_names and "token_type_ids" not in arrays:
            arrays["token_type_ids"] = np.zeros_like(arrays["input_ids"])
        return SimpleNamespace(logits=torch.from_numpy(np.ascontiguousarray(self.backend.logits(arrays))))


def find_run_onnx_export(run_dir: Path) -> Path:
    """The run's ONNX export folder (fp32 before INT8); a UserError naming the export command when it has none."""
    for relative in RUN_ONNX_EXPORTS:
        folder = run_dir / relative
        if (folder / EXPORT_REPORT_NAME).is_file():
            return folder
    raise UserError(f"{run_dir}: has no ONNX export (looked in {' and '.join(RUN_ONNX_EXPORTS)}); "
                    f"run `tuneforge export {run_dir} --format onnx` first, then --backend onnx")


def load_run_onnx(run_dir: Path) -> OnnxClassifier:
    """The run's ONNX export (see :func:`find_run_onnx_export`) as an :class:`OnnxClassifier`, checked first."""
    export_dir = find_run_onnx_export(run_dir)
    report = json.loads((export_dir / EXPORT_REPORT_NAME).read_text(encoding="utf-8"))
    if report.get("format") != "onnx":
        raise UserError(f"{export_dir}: its {EXPORT_REPORT_NAME} says format '{report.get('format')}', not onnx; "
                        f"re-export with `tuneforge export {run_dir} --format onnx`")
    check_export_usable(export_dir, report)
    model_file = export_dir / report["model_file"]
    if not model_file.is_file():
        raise UserError(f"{export_dir}: {report['model_file']} is missing; re-export the run")
    quantize = report.get("quantize")
    return OnnxClassifier(OnnxBackend(model_file, f"onnx {quantize or 'fp32'}"), export_dir)
