"""One inference interface over a classification run folder (PyTorch) and its export folder (ONNX Runtime,
TorchScript, safetensors): texts in, logits out. Export, parity, benchmarks and the server all go through it,
so the numbers they report are about the same code path. Also what every export shares: which task's runs
export to which format (the task's ``export_formats``), and ``export_report.json``."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tuneforge import __version__
from tuneforge.base.atomic import write_json_atomic
from tuneforge.base.errors import UserError
from tuneforge.base.integrity import EXPORT_REPORT_NAME
# OnnxBackend and cpu_threads live in core (predict/eval --backend onnx use them too); export, serve and the
# benches import them from here
from tuneforge.core.evaluate.onnx_backend import OnnxBackend, check_export_usable, cpu_threads  # noqa: F401
from tuneforge.core.tasks import TASKS, LanguageModelTask
from tuneforge.core.tasks.predictor import Predictor

REPORT_NAME = EXPORT_REPORT_NAME
FORMATS = ("onnx", "torchscript", "safetensors")
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt", "safetensors": "model.safetensors"}
# What `tuneforge serve` (and load_classifier) reads: a single-label classifier and its labels.json.
SERVED_TASKS = ("classification",)


def exportable_tasks() -> str:
    """Which tasks' runs export to what, in words: "classification (onnx, torchscript, safetensors); sft,
    causal-lm, masked-lm (safetensors)", from each task's ``export_formats``."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, task in TASKS.items():
        if task.export_formats:
            groups.setdefault(tuple(task.export_formats), []).append(name)
    return "; ".join(f"{', '.join(names)} ({', '.join(formats)})" for formats, names in groups.items())


def check_export_format(task: str, fmt: str) -> None:
    """Fail with "not supported yet" unless runs of ``task`` (a run's ``task:``, possibly unknown to this
    tuneforge) declare ``fmt`` in their task's ``export_formats``."""
    task_class = TASKS.get(task)
    formats = tuple(task_class.export_formats) if task_class is not None else ()
    if not formats:
        raise UserError(f"task '{task}' runs: not supported yet; export works for runs of {exportable_tasks()}")
    if fmt not in formats:
        raise UserError(f"export --format {fmt}: not supported yet for task '{task}' runs; they export to "
                        f"{', '.join(formats)} (--format {formats[0]})")


def unsupported_task(task: str, what: str = "runs") -> UserError:
    """What serve (and :func:`load_classifier`) answers for a run or an export of a task it does not serve."""
    hint = ""
    task_class = TASKS.get(task)
    if task_class is not None and issubclass(task_class, LanguageModelTask):
        auto = "AutoModelForCausalLM" if task_class.causal else "AutoModelForMaskedLM"
        hint = (f"; a language model's safetensors export (tuneforge export RUN_DIR --format safetensors) loads "
                f"with transformers' {auto}.from_pretrained(DIR)"
                + ("; `tuneforge generate RUN_DIR` answers prompts from the run" if task_class.causal else ""))
    return UserError(f"task '{task}' {what}: not supported yet; serve works for {', '.join(SERVED_TASKS)} runs and "
                     f"their exports only{hint}")


def remove_partial_export(out: Path, created: bool) -> None:
    """After a crashed export: leave nothing behind that looks like an export (the folder if the export made
    it, else what it wrote into the empty folder it was given)."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for child in out.iterdir():
        shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)


def write_report(out: Path, report: dict) -> None:
    """``export_report.json`` in the export folder, atomically, readable like the model files beside it."""
    write_json_atomic(out / REPORT_NAME, report)
    (out / REPORT_NAME).chmod(0o644)  # the temporary file was 0600


def export_versions() -> dict[str, str]:
    """The library versions an export records."""
    versions = {"tuneforge": __version__}
    for package in ("torch", "transformers", "onnx", "onnxruntime"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def model_input_names(tokenizer, model=None) -> list[str]:
    """The inputs the model is fed: input_ids, attention_mask and, where both sides use them, token_type_ids."""
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in getattr(tokenizer, "model_input_names", []):
        if model is None:
            names.append("token_type_ids")
        else:
            import inspect

            parameters = inspect.signature(model.forward).parameters
            if "token_type_ids" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
                names.append("token_type_ids")
    return names


class Encoder:
    """Tokenizes texts (and pair texts) once, truncated to the run's max_length, and pads batches."""

    def __init__(self, tokenizer, max_length: int, input_names: list[str]) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.input_names = input_names
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def tokenize(self, texts: list[str], pairs: list[str] | None = None) -> list[dict[str, list[int]]]:
        encoded = self.tokenizer(list(texts), list(pairs) if pairs is not None else None, truncation=True,
                                 max_length=self.max_length, padding=False)
        rows = []
        for i in range(len(texts)):
            ids = encoded["input_ids"][i]
            row = {"input_ids": ids, "attention_mask": [1] * len(ids)}
            if "token_type_ids" in self.input_names:
                types = encoded.get("token_type_ids")
                row["token_type_ids"] = types[i] if types is not None else [0] * len(ids)
            rows.append(row)
        return rows

    def pad(self, rows: list[dict[str, list[int]]]) -> dict[str, np.ndarray]:
        """int64 arrays padded to the longest row, one per input name."""
        width = max(len(row["input_ids"]) for row in rows)
        batch = {}
        for name in self.input_names:
            fill = self.pad_token_id if name == "input_ids" else 0
            array = np.full((len(rows), width), fill, dtype=np.int64)
            for r, row in enumerate(rows):
                array[r, :len(row[name])] = row[name]
            batch[name] = array
        return batch

    def __call__(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        return self.pad(self.tokenize(texts, pairs))


class Backend(Protocol):
    name: str

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


class TorchBackend:
    """An eager PyTorch module (fp32, or dynamically quantized INT8)."""

    def __init__(self, model, name: str = "pytorch") -> None:
        self.model = model.eval()
        self.name = name

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            output = self.model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
        logits = output.logits if hasattr(output, "logits") else output
        return logits.float().numpy()


class TorchScriptBackend:
    """A traced TorchScript module taking the inputs positionally, returning logits."""

    def __init__(self, path: Path, input_names: list[str], name: str = "torchscript") -> None:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.module = torch.jit.load(str(path), map_location="cpu").eval()
        self.input_names = input_names
        self.name = name

    def logits(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(*[torch.from_numpy(inputs[n]) for n in self.input_names]).float().numpy()


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass
class TextClassifier:
    """Label names, an encoder and a backend: everything needed to classify texts."""

    label_names: list[str]
    encoder: Encoder
    backend: Backend
    is_pair_task: bool
    description: str
    source: Path
    # The run's calibration (calibration.json; an export keeps it in export_report.json): probabilities are
    # softmax(logits / temperature). The model files themselves output the uncalibrated logits.
    temperature: float = 1.0

    def logits(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 32) -> np.ndarray:
        """Logits in the input order; batches are length-sorted so little time goes to padding."""
        rows = self.encoder.tokenize(texts, pairs)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]), reverse=True)
        result = np.zeros((len(rows), len(self.label_names)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            result[chunk] = self.backend.logits(self.encoder.pad([rows[i] for i in chunk]))
        return result

    def probabilities(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 32) -> np.ndarray:
        """Softmax of the logits divided by the run's temperature (1.0: a run without calibration)."""
        return softmax(self.logits(texts, pairs, batch_size) / self.temperature)


def read_report(export_dir: Path) -> dict:
    return json.loads((export_dir / REPORT_NAME).read_text(encoding="utf-8"))


def load_classifier(path: str | Path, threads: int | None = None, require_parity: bool = True) -> TextClassifier:
    """A run folder (its PyTorch model) or an export folder (its ONNX / TorchScript / safetensors model).

    An export folder whose parity check failed (or never ran) is refused unless ``require_parity`` is off.
    ``threads``: intra-op threads for PyTorch (process-wide) and ONNX Runtime; default PyTorch's."""
    path = Path(path)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if not path.is_dir():
        raise UserError(f"{path}: folder not found; pass a run folder (tuneforge train) or an export folder "
                        "(tuneforge export)")
    if (path / REPORT_NAME).is_file():
        return _load_export(path, threads, require_parity)
    if (path / "config.yaml").is_file():
        return _load_run(path, threads)
    raise UserError(f"{path}: neither a run folder (no config.yaml) nor an export folder (no {REPORT_NAME})")


def run_task(run_dir: Path) -> str:
    """The ``task:`` of a run folder's config.yaml as written (classification when absent), read before the
    recipe schema, which would reject a task this tuneforge does not know with a less useful message."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return "classification"
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return str(raw.get("task", "classification")) if isinstance(raw, dict) else "classification"


def check_run_task(run_dir: Path) -> None:
    """Fail with "not supported yet" for runs that serve does not serve (see :data:`SERVED_TASKS`)."""
    task = run_task(run_dir)
    if task not in SERVED_TASKS:
        raise unsupported_task(task, "runs")


def _load_run(run_dir: Path, threads: int | None) -> TextClassifier:
    """The run's model as :class:`tuneforge.core.tasks.predictor.Predictor` loads it (whatever the method's layout)."""
    check_run_task(run_dir)
    predictor = Predictor(run_dir)
    model, tokenizer, recipe = predictor.model.eval(), predictor.tokenizer, predictor.recipe
    encoder = Encoder(tokenizer, recipe.data.max_length, model_input_names(tokenizer, model))
    return TextClassifier(list(predictor.label_names), encoder, TorchBackend(model, "pytorch fp32"),
                          recipe.data.text_pair_column is not None, "run folder, PyTorch fp32", run_dir,
                          temperature=predictor.temperature)


def _load_export(export_dir: Path, threads: int | None, require_parity: bool) -> TextClassifier:
    from transformers import AutoTokenizer

    report = read_report(export_dir)
    if report.get("task", "classification") not in SERVED_TASKS:
        raise unsupported_task(str(report["task"]), "exports")
    if require_parity:  # a finished export: passed its checks, files as its gate read them (during export: none yet)
        check_export_usable(export_dir, report)
    fmt, quantize = report["format"], report.get("quantize")
    model_file = export_dir / report["model_file"]
    if not model_file.is_file():
        raise UserError(f"{export_dir}: {report['model_file']} is missing; re-export the run")
    tokenizer = AutoTokenizer.from_pretrained(export_dir)
    input_names = report["input_names"]
    name = f"{fmt} {quantize or 'fp32'}"
    if fmt == "onnx":
        backend: Backend = OnnxBackend(model_file, name, threads)
    elif fmt == "torchscript":
        backend = TorchScriptBackend(model_file, input_names, name)
    elif fmt == "safetensors":
        from transformers import AutoModelForSequenceClassification

        backend = TorchBackend(AutoModelForSequenceClassification.from_pretrained(export_dir).eval(), name)
    else:
        raise UserError(f"{export_dir}: unknown export format '{fmt}' in {REPORT_NAME}")
    label_names = json.loads((export_dir / "labels.json").read_text(encoding="utf-8"))
    encoder = Encoder(tokenizer, report["max_length"], input_names)
    return TextClassifier(label_names, encoder, backend, bool(report.get("text_pair_column")),
                          f"export folder, {name}", export_dir, temperature=float(report.get("temperature") or 1.0))
