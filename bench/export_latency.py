"""PyTorch fp32 / PyTorch INT8 / ONNX fp32 / ONNX INT8 of one classification run, measured side by side on
this CPU: size, p50/p95 latency at batch 1, rows/s at batch 32, test accuracy, parity with PyTorch fp32.

    python bench/export_latency.py RUN_DIR [--rounds 5] [--latency-runs 500] > numbers.json

Prints JSON (stdout) and a markdown table (stderr). Uses the same code as ``tuneforge export``
(tuneforge.apps.export): the variants are built in a scratch folder and measured in interleaved rounds.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--latency-runs", type=int, default=500, help="batch-1 passes per variant (all rounds)")
    parser.add_argument("--throughput-rows", type=int, default=512)
    parser.add_argument("--threads", type=int, help="threads for PyTorch and ONNX Runtime (default: PyTorch's)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import torch

    from tuneforge.base.quiet import quiet_libraries
    from tuneforge.apps.export.latency import BenchSettings, benchmark, labelled_accuracy, size_bytes
    from tuneforge.apps.export.onnx import export_onnx
    from tuneforge.apps.export.parity import check_parity
    from tuneforge.apps.export.pipeline import cpu_name, example_batch, load_parity_rows, load_test_split
    from tuneforge.apps.export.quantize import quantize_onnx, quantize_torch
    from tuneforge.apps.export.runtime import OnnxBackend, TextClassifier, TorchBackend, cpu_threads, load_classifier
    from tuneforge.core.recipe import load_run_recipe

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime sessions take cpu_threads(), i.e. this
    run_dir = Path(args.run_dir)
    recipe = load_run_recipe(run_dir)
    reference = load_classifier(run_dir)
    texts, pairs, source = load_parity_rows(recipe, None, 512)
    test = load_test_split(recipe, reference.label_names)
    if test is None:
        sys.exit(f"{run_dir}: the run has no readable data.test; this benchmark reports test accuracy")
    model, encoder = reference.backend.model, reference.encoder

    def variant(backend) -> TextClassifier:
        return TextClassifier(reference.label_names, encoder, backend, reference.is_pair_task, backend.name, run_dir)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        quantized = quantize_torch(model)
        buffer = io.BytesIO()
        torch.save(quantized.state_dict(), buffer)
        (scratch / "pytorch-int8.pt").write_bytes(buffer.getvalue())
        export_onnx(model, example_batch(reference, texts, pairs), encoder.input_names, scratch / "model.onnx")
        quantize_onnx(scratch / "model.onnx", scratch / "model-int8.onnx")
        variants = {
            "PyTorch fp32": reference,
            "PyTorch INT8": variant(TorchBackend(quantized, "pytorch int8")),
            "ONNX fp32": variant(OnnxBackend(scratch / "model.onnx", "onnx fp32")),
            "ONNX INT8": variant(OnnxBackend(scratch / "model-int8.onnx", "onnx int8")),
        }
        sizes = {
            "PyTorch fp32": size_bytes(sorted((run_dir / "model").glob("*.safetensors"))),
            "PyTorch INT8": size_bytes([scratch / "pytorch-int8.pt"]),
            "ONNX fp32": size_bytes([scratch / "model.onnx"]),
            "ONNX INT8": size_bytes([scratch / "model-int8.onnx"]),
        }
        settings = BenchSettings(latency_runs=args.latency_runs, rounds=args.rounds,
                                 throughput_rows=args.throughput_rows)
        load_before = os.getloadavg()[0]
        timings = benchmark(variants, test.texts, test.text_pairs, settings)
        load_after = os.getloadavg()[0]
        rows = {}
        for name, classifier in variants.items():
            rows[name] = {"size_mb": round(sizes[name] / 1e6, 2), **timings[name],
                          "test": labelled_accuracy(classifier, test.texts, test.text_pairs, test.labels),
                          "parity_vs_pytorch_fp32": check_parity(reference, classifier, texts, pairs)}
    base = rows["PyTorch fp32"]
    for row in rows.values():
        row["speedup_batch1"] = round(base["latency_batch1_p50_ms"] / row["latency_batch1_p50_ms"], 2)
        row["speedup_batch32"] = round(row["throughput_batch32_rows_per_s"] / base["throughput_batch32_rows_per_s"], 2)
        row["accuracy_change_points"] = round(100 * (row["test"]["accuracy"] - base["test"]["accuracy"]), 2)
    result = {"run_dir": str(run_dir), "model": recipe.model, "test_set": str(recipe.data.test),
              "test_rows": len(test), "parity_rows": source, "cpu": cpu_name(), "threads": cpu_threads(),
              "load_average_1min": [round(load_before, 2), round(load_after, 2)], "settings": settings.as_dict(),
              "variants": rows}
    print(json.dumps(result, indent=2))
    table = ["| format | size MB | p50 ms (batch 1) | p95 ms (batch 1) | rows/s (batch 32) | test accuracy | "
             "agreement with fp32 |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name, row in rows.items():
        table.append(f"| {name} | {row['size_mb']:.1f} | {row['latency_batch1_p50_ms']:.2f} | "
                     f"{row['latency_batch1_p95_ms']:.2f} | {row['throughput_batch32_rows_per_s']:.0f} | "
                     f"{row['test']['accuracy']:.4f} | {row['parity_vs_pytorch_fp32']['agreement']:.2%} |")
    print("\n".join(table), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
