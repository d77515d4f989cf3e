"""The inference baseline of bench/inference.py: a plain ``transformers.pipeline`` script, as a practitioner
writes it, labelling every row of a JSONL file with a saved classifier (batch 32).

    python bench/hf_pipeline_baseline.py --model RUN_DIR/model --input test.jsonl --out labels.json
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True, help="a transformers model folder (a run's model/)")
    parser.add_argument("--input", required=True, help="JSONL with a 'text' field")
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args()

    from transformers import pipeline

    with open(args.input, encoding="utf-8") as stream:
        texts = [json.loads(line)["text"] for line in stream if line.strip()]
    classifier = pipeline("text-classification", model=args.model, device="cpu")
    results = classifier(texts, batch_size=args.batch_size, truncation=True, max_length=args.max_length)
    with open(args.out, "w", encoding="utf-8") as stream:
        json.dump([r["label"] for r in results], stream)


if __name__ == "__main__":
    main()
