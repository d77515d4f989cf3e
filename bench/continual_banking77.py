"""Split BANKING77 by label into an old half and a new half, for the continual fine-tuning measurement.

    python bench/continual_banking77.py /work/shared/data/banking77 OUT_DIR [TRAIN_ROWS_PER_LABEL [TEST_ROWS_PER_LABEL]]

Writes ``OUT_DIR/{old,new}_{train,test}.jsonl`` and five recipes (``old.yaml``, ``new-alone.yaml``,
``replay.yaml``, ``ewc.yaml``, ``none.yaml``); the labels alternate by their sorted position (even: old,
odd: new), so both halves mix the topics. ``TRAIN_ROWS_PER_LABEL`` / ``TEST_ROWS_PER_LABEL`` keep only the first that many
rows of each label (a faster measurement on a shared CPU). The recipes fine-tune MiniLM's top two layers and head
(``method: freeze``, the bottom four layers' output computed once by the activation cache). The commands of
docs/continual.md then train on them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RECIPE = """name: {name}
model: minilm
data:
  train: {train}
  test: {test}
  max_length: 32
method:
  name: freeze
  unfreeze_top_layers: 2
train:
  epochs: {epochs}
  batch_size: 32
  learning_rate: 5.0e-4
  seed: 42
{extra}"""


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def first_per_label(rows: list[dict], limit: int | None) -> list[dict]:
    """The first ``limit`` rows of each label (all rows when ``limit`` is None), in file order."""
    if limit is None:
        return rows
    seen: dict[str, int] = {}
    kept = []
    for row in rows:
        seen[row["label"]] = seen.get(row["label"], 0) + 1
        if seen[row["label"]] <= limit:
            kept.append(row)
    return kept


def main(source: Path, out: Path, train_per_label: int | None = None, test_per_label: int | None = None,
         epochs: int = 4) -> None:
    out.mkdir(parents=True, exist_ok=True)
    train = first_per_label(read_jsonl(source / "train.jsonl"), train_per_label)
    test = first_per_label(read_jsonl(source / "test.jsonl"), test_per_label)
    labels = sorted({row["label"] for row in train})
    old = set(labels[0::2])
    for split, rows in (("train", train), ("test", test)):
        for half, keep in (("old", lambda r: r["label"] in old), ("new", lambda r: r["label"] not in old)):
            chosen = [r for r in rows if keep(r)]
            (out / f"{half}_{split}.jsonl").write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen), encoding="utf-8")
    recipes = {"old": ("old", ""), "new-alone": ("new", "")}
    for strategy in ("replay", "ewc", "none"):
        recipes[strategy] = ("new", f"continual:\n  strategy: {strategy}\n")
    for name, (half, extra) in recipes.items():
        (out / f"{name}.yaml").write_text(RECIPE.format(name=f"b77-{name}", train=f"{half}_train.jsonl",
                                                        test=f"{half}_test.jsonl", epochs=epochs, extra=extra),
                                          encoding="utf-8")
    print(json.dumps({"old_labels": len(old), "new_labels": len(labels) - len(old), "folder": str(out)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), *(int(value) for value in sys.argv[3:5]))
