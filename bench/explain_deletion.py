"""Check integrated-gradients explanations of a trained classifier on test rows: completeness and deletion.

    python bench/explain_deletion.py RUN_DIR TEST_FILE [ROWS] [STEPS]

For ``ROWS`` (default 100) rows drawn at random (seed 0) from ``TEST_FILE`` (rows with at least 4 tokens):

- completeness: |sum of attributions - (target logit - baseline target logit)| / |that difference|, per row;
- deletion: the predicted label's probability drop when the row's 3 tokens with the highest attribution toward
  that label are removed, against the drop when 3 random tokens (seeded) are removed.

Prints one JSON object (means, medians, ratio).
"""

from __future__ import annotations

import json
import random
import sys
import time

import numpy as np

from tuneforge.apps.explain import Explainer
from tuneforge.base.tables import read_table


def main(run_dir: str, test_file: str, rows: int = 100, steps: int = 50) -> dict:
    explainer = Explainer(run_dir, steps=steps)
    texts = read_table(test_file)[explainer.recipe.data.text_column].astype(str).tolist()
    order = list(range(len(texts)))
    random.Random(0).shuffle(order)
    rng = random.Random(1)
    errors, top_drops, random_drops, skipped = [], [], [], 0
    started = time.perf_counter()
    for index in order:
        if len(errors) == rows:
            break
        ids = explainer.tokenizer(texts[index], truncation=True,
                                  max_length=explainer.recipe.data.max_length)["input_ids"]
        special = explainer.tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
        positions = [i for i, flag in enumerate(special) if not flag]
        if len(positions) < 4:
            skipped += 1
            continue
        explanation = explainer.explain(texts[index])
        errors.append(explanation.completeness_error)
        predicted = explainer.label_names.index(explanation.predicted)
        before = explainer.probabilities(ids)[predicted]
        ranked = sorted(range(len(positions)), key=lambda k: -explanation.attributions[k])
        top = {positions[k] for k in ranked[:3]}
        chosen = set(rng.sample(positions, 3))
        top_drops.append(before - explainer.probabilities([t for i, t in enumerate(ids) if i not in top])[predicted])
        random_drops.append(before - explainer.probabilities([t for i, t in enumerate(ids)
                                                              if i not in chosen])[predicted])
    result = {"run": str(run_dir), "test_file": str(test_file), "rows": len(errors), "skipped_short_rows": skipped,
              "steps": steps, "baseline": explanation.baseline,
              "completeness_error_mean": float(np.mean(errors)), "completeness_error_median": float(np.median(errors)),
              "completeness_error_max": float(np.max(errors)),
              "top3_deletion_drop_mean": float(np.mean(top_drops)),
              "random3_deletion_drop_mean": float(np.mean(random_drops)),
              "ratio": float(np.mean(top_drops) / np.mean(random_drops)) if np.mean(random_drops) else None,
              "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(value) for value in sys.argv[3:5]))
