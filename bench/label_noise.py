"""How well does `tuneforge data noise` find wrong labels? Flip a known share of labels and measure.

    python bench/label_noise.py ../shared/data/sms_spam/train.jsonl --noise 0.05 [--model minilm] [--folds 5]

Each flipped row gets another label drawn at random (the other one, for two labels). The finder runs on
the noisy copy exactly as `tuneforge data noise` does; precision is the share of flagged rows that were
flipped, recall the share of flipped rows that were flagged. Rows whose label was already wrong in the
original file count as false positives here, so precision is a lower bound. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from tuneforge.core.recipe import validate_recipe
    from tuneforge.base.tables import read_table, write_table
    from tuneforge.apps.datatools.noise import find_noise

    frame = read_table(args.file)
    labels = sorted(frame["label"].astype(str).unique())
    rng = random.Random(args.seed)
    flipped_lines = set(rng.sample(list(frame["__source_row__"]), round(args.noise * len(frame))))
    noisy = frame.copy()
    mask = noisy["__source_row__"].isin(flipped_lines)
    noisy.loc[mask, "label"] = [rng.choice([l for l in labels if l != old]) for old in noisy.loc[mask, "label"]]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "noisy.jsonl"
        write_table(noisy, path)  # the same line numbers: one object per line, in order
        recipe = validate_recipe({"name": "noise-bench", "model": args.model, "method": {"name": "freeze"},
                                  "data": {"train": str(path), "max_length": args.max_length}})
        started = time.perf_counter()
        result = find_noise(recipe, args.folds, log=lambda m: print(m, file=sys.stderr))
        seconds = time.perf_counter() - started
    found = set(result.issues["row"])
    hits = len(found & flipped_lines)
    print(json.dumps({
        "file": args.file, "rows": len(frame), "flipped": len(flipped_lines), "noise": args.noise,
        "flagged": len(found), "flagged_and_flipped": hits,
        "precision": round(hits / max(len(found), 1), 4), "recall": round(hits / max(len(flipped_lines), 1), 4),
        "precision_top_k": round(len(set(result.issues["row"][:len(flipped_lines)]) & flipped_lines)
                                 / max(len(flipped_lines), 1), 4),
        "out_of_fold_accuracy": round(result.out_of_fold_accuracy, 4), "folds": args.folds, "model": args.model,
        "seconds": round(seconds, 1), "seconds_features": round(result.seconds_features, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
