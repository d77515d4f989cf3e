"""Accuracy and inference speed of finished runs on one labelled file, side by side (docs/distillation.md).

    python bench/distill_speed.py --data /tmp/sst2-test600.jsonl RUN_DIR [RUN_DIR ...] [--threads 1]

Prints one JSON object per run: layers, parameters, test accuracy, and rows/s of `Predictor.probabilities`
(median of --repeats timed passes over the whole file, after one warm-up pass).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--data", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from tuneforge.base.tables import read_table
    from tuneforge.core.tasks.predictor import Predictor

    torch.set_num_threads(args.threads)
    for run in args.runs:
        predictor = Predictor(run)
        data = predictor.recipe.data
        frame = read_table(args.data)
        texts = frame[data.text_column].astype(str).tolist()
        gold = np.array([predictor.label_names.index(str(v)) for v in frame[data.label_column]])
        probabilities = predictor.probabilities(texts)  # warm-up, and the accuracy
        timings = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            predictor.probabilities(texts)
            timings.append(time.perf_counter() - started)
        seconds = statistics.median(timings)
        print(json.dumps({"run": run, "layers": predictor.model.config.num_hidden_layers,
                          "parameters": sum(p.numel() for p in predictor.model.parameters()),
                          "accuracy": round(float((probabilities.argmax(1) == gold).mean()), 4),
                          "rows": len(texts), "seconds": round(seconds, 2), "rows_per_s": round(len(texts) / seconds, 1),
                          "threads": args.threads}))


if __name__ == "__main__":
    main()
