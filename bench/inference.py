"""Inference speed of a classification run on this CPU: PyTorch fp32, PyTorch INT8, ONNX fp32 and ONNX INT8, at
batch 1 and batch 32, each with its roofline fraction and test accuracy; then the whole `tuneforge predict`
command against a plain ``transformers.pipeline`` script on the same file. One JSON line each.

    python bench/inference.py                       # trains a quick MiniLM run on ../shared/data/sst2 first
    python bench/inference.py RUN_DIR --data ../shared/data/sst2
    python bench/inference.py --rows 64 --train-rows 200   # a smoke run (numbers mean nothing)

Variants (all through :func:`tuneforge.apps.export.load_classifier`, the code path of ``serve`` and of the
export benchmark):

- ``pytorch-fp32``: the run folder's model, eager PyTorch under ``torch.inference_mode``;
- ``pytorch-int8``: ``tuneforge export RUN --format torchscript --quantize int8`` (tuneforge's own PyTorch
  INT8 path: dynamic INT8 Linear layers, sensitive layers kept in fp32, traced);
- ``onnx-fp32``: ``tuneforge export RUN --format onnx``, ONNX Runtime;
- ``onnx-int8``: ``tuneforge export RUN --format onnx --quantize int8``.

The exports are written to ``RUN/export/<format>[-int8]`` (reused when already there), so ``tuneforge predict
RUN --backend onnx`` runs the one measured here.

Timing covers the forward pass of padded batches (tokenization is done once beforehand, as in
:mod:`tuneforge.apps.export.latency`); batches are sorted by token length, as predict, eval and serve sort them.
Batch 1 runs the first ``--latency-rows`` rows one at a time. ``rows_per_s`` is rows over the summed batch
times; ``p50_ms``/``p95_ms`` are per batch. Roofline: see bench/roofline.py (FLOPs from the real tokens,
no padding; fraction of the fp32 2048² matmul rate measured at the start). Test accuracy: from the batch-32
pass over the ``--rows`` test rows.

The whole-command lines time ``python -m tuneforge predict RUN --input test.jsonl`` and
bench/hf_pipeline_baseline.py as separate processes: wall seconds and peak RSS (``os.wait4``).

Take timings with the CPU to yourself (docs/speed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from measure import run_measured  # noqa: E402
from roofline import EncoderShape, fraction, matmul_gflops  # noqa: E402

VARIANTS = {"pytorch-fp32": None, "pytorch-int8": ("torchscript", "int8"), "onnx-fp32": ("onnx", None),
            "onnx-int8": ("onnx", "int8")}


def read_jsonl(path: Path, limit: int | None) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as stream:
        for line in stream:
            if line.strip():
                rows.append(json.loads(line))
            if limit and len(rows) >= limit:
                break
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def train_quick_run(data: Path, work: Path, train_rows: int, epochs: int, max_length: int) -> Path:
    """A MiniLM full fine-tuning run on the first ``train_rows`` rows (a model to measure, not a result)."""
    train_file = write_jsonl(work / "train.jsonl", read_jsonl(data / "train.jsonl", train_rows))
    validation = data / "dev.jsonl" if (data / "dev.jsonl").exists() else data / "validation.jsonl"
    recipe = work / "recipe.yaml"
    recipe.write_text(f"name: bench-inference\nmodel: minilm\ndata:\n  train: {train_file}\n"
                      f"  validation: {validation}\n  max_length: {max_length}\nmethod:\n  name: full\n"
                      f"train:\n  epochs: {epochs}\n  batch_size: 32\n  learning_rate: 1.0e-4\n"
                      "  early_stopping: null\n", encoding="utf-8")
    run = work / "run"
    code = subprocess.run([sys.executable, "-m", "tuneforge", "train", str(recipe), "--output", str(run)]).returncode
    if code:
        sys.exit(f"training the quick run failed (exit {code})")
    return run


def ensure_export(run: Path, fmt: str, quantize: str | None) -> Path:
    from tuneforge.apps.export import export_run

    folder = run / "export" / (fmt + (f"-{quantize}" if quantize else ""))
    if not (folder / "export_report.json").is_file():
        export_run(run, fmt, quantize, measure=False)
    return folder


def time_batches(classifier, batches: list[dict[str, np.ndarray]], warmup: int) -> tuple[list[float], list]:
    """Seconds per batch and the logits of each (after ``warmup`` untimed batches)."""
    for batch in batches[:warmup]:
        classifier.backend.logits(batch)
    seconds, outputs = [], []
    for batch in batches:
        started = time.perf_counter()
        outputs.append(classifier.backend.logits(batch))
        seconds.append(time.perf_counter() - started)
    return seconds, outputs


def measure_variant(name: str, classifier, rows: list[dict], gold: np.ndarray, shape: EncoderShape, peak: float,
                    args: argparse.Namespace) -> list[dict]:
    encoder = classifier.encoder
    encoded = encoder.tokenize([row["text"] for row in rows])
    lengths = [len(row["input_ids"]) for row in encoded]
    lines = []
    for batch_size in args.batch_sizes:
        if batch_size == 1:
            order = list(range(min(len(encoded), args.latency_rows)))
        else:
            order = sorted(range(len(encoded)), key=lambda i: lengths[i], reverse=True)
        chunks = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
        batches = [encoder.pad([encoded[i] for i in chunk]) for chunk in chunks]
        seconds, outputs = time_batches(classifier, batches, args.warmup)
        total = sum(seconds)
        flops = sum(shape.forward(lengths[i]) for i in order)
        padded_tokens = sum(batch["input_ids"].size for batch in batches)
        line = {"bench": "inference", "variant": name, "backend": classifier.backend.name, "batch_size": batch_size,
                "rows": len(order), "rows_per_s": round(len(order) / total, 1),
                "p50_ms": round(1000 * statistics.median(seconds), 3),
                "p95_ms": round(1000 * float(np.percentile(seconds, 95)), 3),
                "real_tokens": sum(lengths[i] for i in order), "padded_tokens": int(padded_tokens),
                **fraction(flops, total, peak)}
        if batch_size != 1:
            predicted = np.zeros(len(encoded), dtype=np.int64)
            for chunk, logits in zip(chunks, outputs):
                predicted[chunk] = np.asarray(logits).argmax(axis=1)
            line["test_accuracy"] = round(float((predicted == gold).mean()), 4)
        lines.append(line)
    return lines


def whole_commands(run: Path, test_file: Path, work: Path, max_length: int) -> list[dict]:
    """`tuneforge predict` (torch and onnx backends) and the pipeline script on the same file, whole commands."""
    rows = sum(1 for line in test_file.open(encoding="utf-8") if line.strip())
    lines = []
    commands = {
        "tuneforge predict --backend torch": [sys.executable, "-m", "tuneforge", "predict", str(run), "--input",
                                              str(test_file), "--output", str(work / "predict-torch.csv")],
        "tuneforge predict --backend onnx": [sys.executable, "-m", "tuneforge", "predict", str(run), "--input",
                                             str(test_file), "--output", str(work / "predict-onnx.csv"),
                                             "--backend", "onnx"],
        "transformers.pipeline batch 32": [sys.executable, str(HERE / "hf_pipeline_baseline.py"), "--model",
                                           str(run / "model"), "--input", str(test_file), "--out",
                                           str(work / "pipeline.json"), "--max-length", str(max_length)],
    }
    for stale in (work / "predict-torch.csv", work / "predict-onnx.csv"):  # predict never overwrites
        stale.unlink(missing_ok=True)
    for index, (name, command) in enumerate(commands.items()):
        code, seconds, rss = run_measured(command, work / f"whole-command-{index}.log")
        lines.append({"bench": "whole_command", "command": name, "rows": rows, "exit_code": code,
                      "wall_s": round(seconds, 2), "rows_per_s": round(rows / seconds, 1), "peak_rss_mib": round(rss)})
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", help="a finished classification run (default: train a quick one)")
    parser.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "sst2"),
                        help="folder with test.jsonl (and train.jsonl, dev.jsonl for the quick run)")
    parser.add_argument("--rows", type=int, default=None, help="use the first N test rows (smoke runs)")
    parser.add_argument("--latency-rows", type=int, default=300, help="rows timed one at a time at batch 1")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--train-rows", type=int, default=2000, help="quick run: training rows (default 2000)")
    parser.add_argument("--epochs", type=int, default=1, help="quick run: epochs (default 1)")
    parser.add_argument("--max-length", type=int, default=128, help="quick run: max_length (default 128)")
    parser.add_argument("--no-whole-command", action="store_true", help="skip the predict-vs-pipeline lines")
    parser.add_argument("--work", help="folder for the quick run, logs and outputs (default: a temporary one)")
    args = parser.parse_args()
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {', '.join(sorted(unknown))}; choose from {', '.join(VARIANTS)}")

    import torch

    peak = matmul_gflops()
    print(json.dumps({"bench": "roofline", "matmul_fp32_gflops": round(peak, 1), "threads": torch.get_num_threads(),
                      "load_average": round(os.getloadavg()[0], 2)}), flush=True)

    from tuneforge.apps.export import load_classifier

    data = Path(args.data)
    work = Path(args.work or tempfile.mkdtemp(prefix="tuneforge-bench-inference-"))
    work.mkdir(parents=True, exist_ok=True)
    run = Path(args.run_dir) if args.run_dir else train_quick_run(data, work, args.train_rows, args.epochs,
                                                                  args.max_length)
    rows = read_jsonl(data / "test.jsonl", args.rows)
    reference = load_classifier(run)
    label_index = {name: i for i, name in enumerate(reference.label_names)}
    gold = np.array([label_index[str(row["label"])] for row in rows])
    shape = EncoderShape.of(reference.backend.model)
    for name in args.variants.split(","):
        classifier = reference if VARIANTS[name] is None else load_classifier(ensure_export(run, *VARIANTS[name]))
        for line in measure_variant(name, classifier, rows, gold, shape, peak, args):
            print(json.dumps({**line, "run": str(run)}), flush=True)
    if not args.no_whole_command:
        test_file = write_jsonl(work / "predict-input.jsonl", [{"text": row["text"]} for row in rows])
        ensure_export(run, "onnx", None)
        for line in whole_commands(run, test_file, work, reference.encoder.max_length):
            print(json.dumps(line), flush=True)
    print(json.dumps({"bench": "end", "load_average": round(os.getloadavg()[0], 2), "work": str(work)}), flush=True)


if __name__ == "__main__":
    main()
