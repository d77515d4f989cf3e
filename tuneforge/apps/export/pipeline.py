"""``tuneforge export``: write the model in a deployable format beside its tokenizer and label map, check
parity with the run's PyTorch model, measure, and record it all in ``export_report.json``.

Which formats a run exports to is its task's ``export_formats`` (:class:`tuneforge.core.tasks.base.Task`);
anything else fails with "not supported yet". Language-model runs (sft, causal-lm, masked-lm) go to
:mod:`tuneforge.apps.export.language_model`; the rest of this module is the classification export.

An export folder holds exactly one model (``model.onnx``, ``model.pt`` or ``model.safetensors`` +
``config.json``): with ``--quantize int8`` that is the INT8 model, and the fp32 model of the same
format is built in a scratch folder only to be measured as the "before".
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Callable

import numpy as np

from tuneforge.base.errors import UserError
from tuneforge.base.faults import fault_point
from tuneforge.base.integrity import IntegrityError, gate_export
from tuneforge.base.tables import read_table
from tuneforge.core.data.examples import load_classification_data
from tuneforge.core.data.splits import read_split, to_split
from tuneforge.core.recipe import load_run_recipe
from tuneforge.core.tasks import LanguageModelTask, task_for
from tuneforge.apps.export import language_model
from tuneforge.apps.export.latency import BenchSettings, benchmark, labelled_accuracy, size_bytes
from tuneforge.apps.export.parity import (ParityError, check_parity, describe_parity, gate_key,
                                          raise_if_checks_failed)
from tuneforge.apps.export.runtime import (FORMATS, MODEL_FILES, REPORT_NAME, OnnxBackend, TextClassifier,
                                           TorchScriptBackend, check_export_format, cpu_threads, export_versions,
                                           load_classifier, remove_partial_export, run_task,
                                           write_report)
from tuneforge.apps.export.unfinished import mark_unfinished, reclaim_unfinished_export
# the exporters as modules, not names: looked up at call time, so a test can replace one (a broken exporter)
from tuneforge.apps.export import onnx as onnx_export, quantize as quantization, torchscript as torchscript_export

QUANTIZATIONS = ("int8",)
PARITY_ROWS = 512


def export_run(run_dir: str | Path, fmt: str, quantize: str | None = None, output: str | Path | None = None, *,
               data_file: str | Path | None = None, parity_rows: int = PARITY_ROWS,
               min_agreement: float | None = None, measure: bool = True, settings: BenchSettings | None = None,
               log: Callable[[str], None] = lambda message: None) -> tuple[Path, dict]:
    """Export ``run_dir``; return the export folder and the report. Raises ParityError (after writing the
    report) when the exported model disagrees with the run's model on too many validation rows.
    ``min_agreement``: the strict gate (agreement on every parity row); None: the default gate of the export's
    kind (:mod:`tuneforge.apps.export.parity`: an INT8 export is judged on the rows where the fp32 model is
    confident, and on its validation accuracy).

    ``fmt`` must be one of the run's task's ``export_formats``; language-model runs are exported by
    :func:`tuneforge.apps.export.language_model.export_language_model` (``data_file``, ``parity_rows``,
    ``measure`` and ``settings`` apply to classification runs only)."""
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise UserError(f"export: unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS:
        raise UserError(f"export: unknown quantization '{quantize}'; the one supported is int8")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: run folder not found")
    check_export_format(run_task(run_dir), fmt)
    recipe = load_run_recipe(run_dir)
    task = task_for(recipe.task)
    is_language_model = isinstance(task, LanguageModelTask)
    if is_language_model:
        language_model.check_request(run_dir, recipe, quantize, data_file)
    elif fmt == "safetensors" and quantize:
        raise UserError("export: --format safetensors --quantize int8: not supported yet (safetensors stores "
                        "plain tensors, PyTorch's dynamic INT8 layers keep packed weights); use --format onnx or "
                        "--format torchscript with --quantize int8")
    if min_agreement is not None and not 0 < min_agreement <= 1:
        raise UserError(f"export: --min-agreement must be in (0, 1], got {min_agreement}")
    out = Path(output) if output is not None else run_dir / "export" / (fmt + (f"-{quantize}" if quantize else ""))
    reclaim_unfinished_export(out, log)  # what a killed export left there: emptied, this export starts over
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; export never overwrites, choose another --output "
                        "or remove that folder yourself")
    if is_language_model:
        return language_model.export_language_model(run_dir, recipe, task, out, min_agreement=min_agreement, log=log)

    started = time.time()
    reference = load_classifier(run_dir)
    label_names = reference.label_names
    texts, pairs, source = load_parity_rows(recipe, data_file, parity_rows)
    log(f"parity rows: {len(texts)} from {source}")
    model, tokenizer = reference.backend.model, reference.encoder.tokenizer
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise UserError(f"export: runs whose method keeps base model + adapter (method '{recipe.method.name}', "
                        f"{type(model).__name__}) are not supported yet; train with a mergeable method (full, "
                        "freeze, gradual, or lora/dora/ia3/adalora with merge: true) to export")
    input_names = reference.encoder.input_names
    example = example_batch(reference, texts, pairs)

    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    mark_unfinished(out)
    scratch = Path(tempfile.mkdtemp(prefix="tuneforge-export-"))
    try:
        model_file = out / MODEL_FILES[fmt]
        before_file = None
        plan = None
        if quantize:
            log(f"INT8: measuring each layer's sensitivity on {min(len(texts), quantization.SENSITIVITY_ROWS)} rows")
            plan = quantization.plan_quantization(model, sensitivity_batches(reference, texts, pairs))
            log(f"INT8: {len(plan.quantized)} layers quantized, kept in fp32: {', '.join(plan.kept) or 'none'}")
        log(f"writing {fmt}{' int8' if quantize else ''} model to {out}")
        if fmt == "onnx":
            fp32_file = scratch / "model-fp32.onnx" if quantize else model_file
            onnx_export.export_onnx(model, example, input_names, fp32_file)
            if plan is not None:
                not_found = quantization.quantize_onnx(fp32_file, model_file, quantization.kept_weights(model, plan))
                for name in not_found:  # the gate below still judges the result; say what was not kept
                    plan.kept.pop(name)
                    log(f"INT8: no ONNX node found for {name}; it is quantized too")
                before_file = fp32_file
        elif fmt == "torchscript":
            if plan is not None:
                before_file = scratch / "model-fp32.pt"
                torchscript_export.export_torchscript(model, example, input_names, before_file)
                torchscript_export.export_torchscript(quantization.quantize_torch(model, plan), example, input_names,
                                                      model_file)
            else:
                torchscript_export.export_torchscript(model, example, input_names, model_file)
        else:
            model.save_pretrained(out, safe_serialization=True)
        _save_tokenizer(tokenizer, out, reference.encoder.max_length)
        (out / "labels.json").write_text(json.dumps(label_names, indent=1, ensure_ascii=False), encoding="utf-8")
        fault_point("export-write")  # TUNEFORGE_FAULT: the reliability tests' kill -9 (docs/reliability.md)

        report = {
            "status": "checking",
            "task": "classification",
            "format": fmt,
            "quantize": quantize,
            "model_file": model_file.name,
            "files": sorted(p.name for p in out.iterdir() if p.name != REPORT_NAME),
            "input_names": input_names,
            "output_names": ["logits"],
            "max_length": reference.encoder.max_length,
            "text_column": recipe.data.text_column,
            "text_pair_column": recipe.data.text_pair_column,
            "labels": label_names,
            # the run's calibration: serve and predict divide the exported model's logits by it before the softmax
            "temperature": reference.temperature,
            "run_dir": str(run_dir.resolve()),
            "created": datetime.now().isoformat(timespec="seconds"),
            "versions": export_versions(),
        }
        if plan is not None:
            report["quantization"] = plan.as_dict()
        write_report(out, report)

        candidate = load_classifier(out, require_parity=False)
        # The integrity gate (docs/trust.md): labelled validation rows, collapse and accuracy-drop checks.
        gate_rows = labelled_validation_rows(recipe, label_names, parity_rows) if data_file is None else None
        parity = check_parity(reference, candidate, texts, pairs, min_agreement, quantized=bool(quantize),
                              labelled=gate_rows is not None)
        report["parity"] = {"reference": "the run's PyTorch fp32 model (model/)", "rows": source, **parity}
        log(f"parity: {describe_parity(parity)}, max |Δlogit| {parity['max_abs_logit_diff']:.3g}")
        gate = gate_export(reference, candidate, *(gate_rows or (texts, pairs, None)), out, quantized=bool(quantize),
                           max_metric_drop=recipe.export.max_metric_drop, run_dir=run_dir,
                           key=gate_key(out, run_dir))
        report["integrity"] = dict(gate["probe"])
        raise_if_checks_failed(out, report, parity, gate, run_dir)

        if measure:
            variants = {"pytorch fp32": reference}
            sizes = {"pytorch fp32": size_bytes(sorted((run_dir / "model").glob("*.safetensors")))}
            if before_file is not None:
                variants[f"{fmt} fp32"] = _classifier_over(candidate, before_file, fmt, f"{fmt} fp32")
                sizes[f"{fmt} fp32"] = size_bytes([before_file])
            name = f"{fmt} {quantize or 'fp32'}"
            variants[name] = candidate
            sizes[name] = size_bytes([model_file])
            report["benchmark"] = _measure(variants, sizes, recipe, label_names, texts, pairs,
                                           settings or BenchSettings(), log)
        report["status"] = "ok"
        report["seconds"] = round(time.time() - started, 1)
        write_report(out, report)
        return out, report
    except (ParityError, IntegrityError):
        raise  # the folder stays, with its failed report, for inspection (serve refuses it)
    except BaseException:
        remove_partial_export(out, created)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def load_parity_rows(recipe, data_file: str | Path | None, limit: int) -> tuple[list[str], list[str] | None, str]:
    """A reproducible sample of the run's validation split (recomputed from the recipe), or of ``data_file``."""
    data = recipe.data
    if data_file is not None:
        path = Path(data_file)
        frame = read_table(path)
        for column in [data.text_column] + ([data.text_pair_column] if data.text_pair_column else []):
            if column not in frame.columns:
                raise UserError(f"{path}: no column '{column}' (the run was trained on it)")
        frame = frame[frame[data.text_column].notna() & (frame[data.text_column].astype(str).str.strip() != "")]
        texts = frame[data.text_column].astype(str).tolist()
        pairs = frame[data.text_pair_column].astype(str).tolist() if data.text_pair_column else None
        description = str(path)
    else:
        try:
            validation = load_classification_data(data, recipe.train.seed).validation
        except UserError as error:
            raise UserError(f"export: the parity check needs the run's validation data, which cannot be read "
                            f"({error}); pass --data FILE with the column '{data.text_column}'") from None
        texts, pairs = validation.texts, validation.text_pairs
        description = (f"validation split ({data.validation})" if data.validation is not None else
                       f"validation split (stratified {data.validation_fraction:.0%} of {data.train}, "
                       f"seed {recipe.train.seed})")
    if not texts:
        raise UserError(f"export: no rows for the parity check in {description}")
    if len(texts) > limit:
        pick = sorted(np.random.default_rng(0).choice(len(texts), limit, replace=False).tolist())
        texts = [texts[i] for i in pick]
        pairs = [pairs[i] for i in pick] if pairs is not None else None
        description += f", {limit} sampled rows"
    return texts, pairs, description


def labelled_validation_rows(recipe, label_names: list[str], limit: int):
    """(texts, pairs, label indices in ``label_names``) of the run's validation split, sampled as
    :func:`load_parity_rows` samples it; None when the validation data cannot be read (the gate then checks
    predictions only)."""
    try:
        data = load_classification_data(recipe.data, recipe.train.seed)
    except UserError:
        return None
    if not set(data.label_names) <= set(label_names):
        return None
    run_index = {name: i for i, name in enumerate(label_names)}
    validation = data.validation
    labels = np.array([run_index[data.label_names[i]] for i in validation.labels])
    texts, pairs = list(validation.texts), validation.text_pairs
    if len(texts) > limit:
        pick = sorted(np.random.default_rng(0).choice(len(texts), limit, replace=False).tolist())
        texts, labels = [texts[i] for i in pick], labels[pick]
        pairs = [pairs[i] for i in pick] if pairs is not None else None
    return texts, pairs, labels


def sensitivity_batches(reference: TextClassifier, texts: list[str], pairs: list[str] | None,
                        batch_size: int = 32) -> list[dict]:
    """The first ``SENSITIVITY_ROWS`` parity rows as model inputs (tensors), in batches, for the INT8 plan."""
    import torch

    rows = min(len(texts), quantization.SENSITIVITY_ROWS)
    return [{name: torch.from_numpy(array) for name, array in
             reference.encoder(texts[start:start + batch_size],
                               pairs[start:start + batch_size] if pairs is not None else None).items()}
            for start in range(0, rows, min(batch_size, rows))]


def example_batch(reference: TextClassifier, texts: list[str], pairs: list[str] | None) -> dict[str, np.ndarray]:
    """Two real rows, padded: batch and sequence above 1 so that the exporters keep both axes dynamic."""
    picked = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chosen = [picked[len(picked) // 2], picked[-1]] if len(picked) > 1 else [0, 0]
    rows = [texts[i] for i in chosen]
    pair_rows = [pairs[i] for i in chosen] if pairs is not None else None
    batch = reference.encoder(rows, pair_rows)
    if batch["input_ids"].shape[1] < 3:
        raise UserError("export: the sample rows tokenize to fewer than 3 tokens; pass --data FILE with longer texts")
    return batch


def _save_tokenizer(tokenizer, out: Path, max_length: int) -> None:
    """The run's tokenizer; its tokenizer.json also carries truncation (max_length) and batch padding, so
    that the plain ``tokenizers`` library encodes exactly as tuneforge does."""
    tokenizer.save_pretrained(out)
    path = out / "tokenizer.json"
    if path.is_file():
        from tokenizers import Tokenizer

        fast = Tokenizer.from_file(str(path))
        fast.enable_truncation(max_length)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        fast.enable_padding(pad_id=pad_id, pad_token=tokenizer.pad_token or "[PAD]")
        fast.save(str(path))


def _classifier_over(candidate: TextClassifier, path: Path, fmt: str, name: str) -> TextClassifier:
    """The same encoder and labels as ``candidate`` over another model file of the same format."""
    backend = (OnnxBackend(path, name) if fmt == "onnx" else TorchScriptBackend(path, candidate.encoder.input_names, name))
    return TextClassifier(candidate.label_names, candidate.encoder, backend, candidate.is_pair_task, name, path,
                          temperature=candidate.temperature)


def _measure(variants: dict[str, TextClassifier], sizes: dict[str, int], recipe, label_names: list[str],
             texts: list[str], pairs: list[str] | None, settings: BenchSettings, log) -> dict:
    test = load_test_split(recipe, label_names)
    bench_texts, bench_pairs = (test.texts, test.text_pairs) if test is not None else (texts, pairs)
    log(f"measuring {', '.join(variants)} on this CPU ({cpu_threads()} threads)")
    load_before = os.getloadavg()[0]
    timings = benchmark(variants, bench_texts, bench_pairs, settings)
    load_after = os.getloadavg()[0]
    rows = {}
    for name, classifier in variants.items():
        row = {"size_mb": round(sizes[name] / 1e6, 2), **timings[name]}
        if test is not None:
            row["test"] = labelled_accuracy(classifier, test.texts, test.text_pairs, test.labels)
        rows[name] = row
    base = rows["pytorch fp32"]
    for row in rows.values():
        row["speedup_batch1_vs_pytorch_fp32"] = round(base["latency_batch1_p50_ms"] / row["latency_batch1_p50_ms"], 2)
        row["speedup_batch32_vs_pytorch_fp32"] = round(row["throughput_batch32_rows_per_s"]
                                                       / base["throughput_batch32_rows_per_s"], 2)
        if test is not None:
            row["accuracy_change_points_vs_pytorch_fp32"] = round(
                100 * (row["test"]["accuracy"] - base["test"]["accuracy"]), 2)
    return {
        "variants": rows,
        "test_set": str(recipe.data.test) if test is not None else None,
        "note": ("timings are the model's forward pass only (inputs tokenized beforehand), on this CPU, "
                 "in interleaved rounds; batch-1 latency percentiles pool all rounds, rows/s is the median "
                 "round" + ("" if test is not None else "; the run has no readable data.test, so there is no "
                            "test accuracy and timings use the parity rows")),
        "cpu": cpu_name(),
        "threads": cpu_threads(),
        "load_average_1min": [round(load_before, 2), round(load_after, 2)],
        "settings": settings.as_dict(),
    }


def load_test_split(recipe, label_names: list[str]):
    path = recipe.data.test
    if path is None or not Path(path).is_file():
        return None
    frame, _ = read_split(Path(path), recipe.data, "test")
    return to_split(frame, Path(path), recipe.data, "test", {name: i for i, name in enumerate(label_names)})


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary_lines(out: Path, report: dict) -> list[str]:
    """What ``tuneforge export`` prints: the parity result and the measured table."""
    parity = report["parity"]
    lines = [f"exported {report['format']}{' ' + report['quantize'] if report['quantize'] else ''} to {out}: "
             f"{', '.join(report['files'])}",
             f"  parity vs the run's PyTorch model on {parity['n_examples']} {parity.get('unit', 'rows')} of "
             f"{parity['rows']}: agreement "
             f"{parity['agreement']:.2%}, max |Δlogit| {parity['max_abs_logit_diff']:.3g}"]
    confident = parity.get("confident")
    if report.get("quantize") and confident:
        shown = f"{confident['agreement']:.2%}" if confident["agreement"] is not None else "n/a"
        lines.append(f"  agreement on the {confident['rows']} rows where fp32 is >= "
                     f"{confident['probability_at_least']:.0%} confident: {shown}"
                     + {"confident": " (the gate)", "accuracy": " (no such row: the accuracy drop alone judges)"}.get(
                         parity.get("rule"), f" (gate: agreement on all rows >= {parity.get('min_agreement') or 0:.0%})"))
    integrity = report.get("integrity") or {}
    if "reloaded_accuracy" in integrity:
        lines.append(f"  validation accuracy on {integrity['n_examples']} rows: {integrity['in_memory_accuracy']:.4f} "
                     f"(run) -> {integrity['reloaded_accuracy']:.4f} (export), "
                     f"{100 * integrity['metric_drop']:+.2f} points drop (at most "
                     f"{100 * integrity['max_metric_drop']:.2f} allowed)")
    quantization = report.get("quantization")
    if quantization:
        lines.append(f"  INT8: {quantization['quantized_layers']} layers quantized (per-channel); kept in fp32: "
                     f"{', '.join(quantization['kept_fp32']) or 'none'}")
    bench = report.get("benchmark")
    if bench:
        lines.append(f"  measured on {bench['cpu']}, {bench['threads']} threads (load average "
                     f"{bench['load_average_1min'][0]}→{bench['load_average_1min'][1]}):")
        lines.append(f"  {'variant':<18} {'size MB':>8} {'p50 ms b1':>10} {'p95 ms b1':>10} {'rows/s b32':>11} "
                     f"{'test acc':>9}")
        for name, row in bench["variants"].items():
            accuracy = f"{row['test']['accuracy']:.4f}" if "test" in row else "n/a"
            lines.append(f"  {name:<18} {row['size_mb']:>8.1f} {row['latency_batch1_p50_ms']:>10.2f} "
                         f"{row['latency_batch1_p95_ms']:>10.2f} {row['throughput_batch32_rows_per_s']:>11.1f} "
                         f"{accuracy:>9}")
    lines.append(f"  report: {out / REPORT_NAME}")
    return lines
