"""Reading multi-label data: a list column (``"labels": ["anger", "surprise"]`` in JSON/JSONL/Parquet) or a
string column split on ``data.label_delimiter``. The label set comes from the train split; a label seen only
in another split is an error naming the file and rows. Labels are kept as multi-hot rows (one 0/1 per label),
so an encoded split batches like any other."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from tuneforge.base.recipe import DataConfig
from tuneforge.core.data.splits import sorted_labels
from tuneforge.core.data.splits import format_rows
from tuneforge.core.data.splits import read_split
from tuneforge.core.data.splits import label_name
from tuneforge.core.data.splits import ClassificationData
from tuneforge.core.data.splits import Split
from tuneforge.base.errors import UserError
from tuneforge.base.tables import SOURCE_ROW


def row_labels(value: object, path: Path, row: int, config: DataConfig) -> list[str]:
    """The label names of one row's label cell."""
    if isinstance(value, (list, tuple, np.ndarray)):
        names = [label_name(item) for item in value]
    elif isinstance(value, str) and config.label_delimiter is not None:
        names = [part.strip() for part in value.split(config.label_delimiter)]
    elif isinstance(value, str):
        raise UserError(f"{path}: row {row}: label column '{config.label_column}' holds the string {value!r}; "
                        "task multilabel expects a list (JSON/JSONL), or set data.label_delimiter (e.g. ',') "
                        "to split strings")
    elif value is None or (isinstance(value, float) and math.isnan(value)):
        names = []
    else:
        names = [label_name(value)]
    return [name for name in dict.fromkeys(names) if name.strip()]


def _label_lists(frame: pd.DataFrame, path: Path, config: DataConfig) -> list[list[str]]:
    return [row_labels(value, path, row, config)
            for value, row in zip(frame[config.label_column].tolist(), frame[SOURCE_ROW].tolist())]


def read_multilabel_split(path: Path, config: DataConfig, name: str,
                          label_names: list[str] | None) -> tuple[Split, list[str], list[str]]:
    """(split with multi-hot labels, label names, notes); ``label_names`` None: taken from this (train) file."""
    # A missing label cell is an error (as in classification); an empty list means "none of the labels".
    frame, notes = read_split(path, config, name)
    lists = _label_lists(frame, path, config)
    if label_names is None:
        label_names = sorted_labels(sorted({label for labels in lists for label in labels}))
        if len(label_names) < 2:
            raise UserError(f"{path}: fewer than two distinct labels in column '{config.label_column}'; "
                            "multi-label classification needs at least two")
    index = {label: i for i, label in enumerate(label_names)}
    unknown_rows = [(row, label) for labels, row in zip(lists, frame[SOURCE_ROW].tolist())
                    for label in labels if label not in index]
    if unknown_rows:
        unknown = sorted({label for _, label in unknown_rows})
        raise UserError(f"{path}: label(s) {', '.join(repr(u) for u in unknown[:10])} do not occur in the train set "
                        f"(rows {format_rows(sorted({r for r, _ in unknown_rows}))}), so the model cannot learn them; add "
                        "examples of them to train or remove them from these rows")
    multi_hot = np.zeros((len(lists), len(label_names)), dtype=np.int64)
    for row, labels in enumerate(lists):
        multi_hot[row, [index[label] for label in labels]] = 1
    split = Split(name=name, source=path, texts=frame[config.text_column].astype(str).tolist(),
                  labels=multi_hot.tolist(), source_rows=frame[SOURCE_ROW].astype(int).tolist(),
                  text_pairs=frame[config.text_pair_column].astype(str).tolist() if config.text_pair_column else None)
    return split, label_names, notes


def load_multilabel_data(config: DataConfig, seed: int) -> ClassificationData:
    """Read and check the splits of a multi-label job; validation is a seeded random share of train when
    ``data.validation`` is not given."""
    if config.balance != "none" or config.augment is not None:
        raise UserError("data.balance and data.augment are not supported yet for task multilabel; remove them")
    train, label_names, notes = read_multilabel_split(config.train, config, "train", None)
    if config.validation is not None:
        validation, _, more = read_multilabel_split(config.validation, config, "validation", label_names)
        notes += more
    else:
        from sklearn.model_selection import train_test_split

        count = max(math.ceil(config.validation_fraction * len(train)), 1)
        if len(train) - count < 1:
            raise UserError(f"{config.train}: {len(train)} rows are too few to hold out a validation set; "
                            "add rows or give data.validation")
        train_idx, val_idx = train_test_split(np.arange(len(train)), test_size=count, random_state=seed)
        train, validation = train.subset(sorted(train_idx), "train"), train.subset(sorted(val_idx), "validation")
        notes.append(f"validation: random {config.validation_fraction:.0%} of {config.train.name} "
                     f"({len(validation)} rows, seed {seed})")
    test = None
    if config.test is not None:
        test, _, more = read_multilabel_split(config.test, config, "test", label_names)
        notes += more
    return ClassificationData(label_names=label_names, train=train, validation=validation, test=test, notes=notes)
