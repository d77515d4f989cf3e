"""Measured on this CPU: file size, p50/p95 latency at batch 1, rows/s at batch 32, test accuracy.

Timings cover the model's forward pass only (inputs are tokenized and padded beforehand; tokenization is
the same for every variant); throughput batches are sorted by length, as predict, eval and serve sort them. Variants are measured in interleaved rounds, so that load from other
processes on a shared machine hits all of them alike; latency percentiles pool every round, throughput
is the median over rounds. All backends use the same number of threads (:func:`runtime.cpu_threads`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tuneforge.core.evaluate import classification_metrics


@dataclass
class BenchSettings:
    latency_runs: int = 300     # batch-1 forward passes per variant, over all rounds
    warmup: int = 10            # untimed batch-1 passes per variant before the first round
    batch_size: int = 32
    throughput_rows: int = 512  # rows per throughput pass (consecutive batches of batch_size)
    rounds: int = 3

    def as_dict(self) -> dict:
        return asdict(self)


def size_bytes(paths: list[Path]) -> int:
    return int(sum(p.stat().st_size for p in paths))


def benchmark(variants: dict, texts: list[str], pairs: list[str] | None, settings: BenchSettings) -> dict[str, dict]:
    """Latency and throughput of each :class:`TextClassifier` in ``variants`` on ``texts``."""
    singles, batches = {}, {}
    count = min(len(texts), settings.throughput_rows)
    for name, classifier in variants.items():
        encoder = classifier.encoder
        singles[name] = [encoder([texts[i]], [pairs[i]] if pairs else None) for i in range(min(len(texts), 200))]
        # length-sorted batches, as predict, eval and serve make them (little time spent on padding)
        rows = encoder.tokenize(texts[:count], pairs[:count] if pairs else None)
        order = sorted(range(count), key=lambda i: len(rows[i]["input_ids"]), reverse=True)
        batches[name] = [encoder.pad([rows[i] for i in order[s:s + settings.batch_size]])
                         for s in range(0, count, settings.batch_size)]
        for i in range(settings.warmup):
            classifier.backend.logits(singles[name][i % len(singles[name])])
        classifier.backend.logits(batches[name][0])
    latencies: dict[str, list[float]] = {name: [] for name in variants}
    throughputs: dict[str, list[float]] = {name: [] for name in variants}
    per_round = max(1, settings.latency_runs // settings.rounds)
    for round_index in range(settings.rounds):
        for name, classifier in variants.items():
            logits = classifier.backend.logits
            inputs = singles[name]
            for i in range(per_round):
                x = inputs[(round_index * per_round + i) % len(inputs)]
                start = time.perf_counter()
                logits(x)
                latencies[name].append(time.perf_counter() - start)
            start = time.perf_counter()
            for batch in batches[name]:
                logits(batch)
            throughputs[name].append(count / (time.perf_counter() - start))
    return {
        name: {
            "latency_batch1_p50_ms": round(float(np.percentile(latencies[name], 50)) * 1000, 3),
            "latency_batch1_p95_ms": round(float(np.percentile(latencies[name], 95)) * 1000, 3),
            "latency_runs": len(latencies[name]),
            "throughput_batch32_rows_per_s": round(float(np.median(throughputs[name])), 1),
            "throughput_rows": count,
        }
        for name in variants
    }


def labelled_accuracy(classifier, texts: list[str], pairs: list[str] | None, gold: list[int]) -> dict:
    """accuracy and macro F1 of ``classifier`` on a labelled split."""
    metrics = classification_metrics(np.array(gold), classifier.probabilities(texts, pairs), classifier.label_names,
                                     per_class=False)
    return {"accuracy": metrics["accuracy"], "f1_macro": metrics["f1_macro"], "n_examples": metrics["n_examples"]}
