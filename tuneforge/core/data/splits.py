"""Labelled splits: reading one data file into a checked :class:`Split`, and splitting off validation rows.

Every check here runs before any model is loaded, so that a bad file fails in seconds with a
message naming the file, the rows and the fix. The task-specific loaders (examples, multilabel, images,
multitask) build on these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tuneforge.base.recipe import DataConfig
from tuneforge.base.tables import SOURCE_ROW, read_table
from tuneforge.base.errors import UserError


@dataclass
class Split:
    """One split: texts (and optional pair texts), label ids and where each row came from."""

    name: str
    source: Path
    texts: list[str]
    labels: list[int]
    source_rows: list[int]
    text_pairs: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: list[int] | np.ndarray, name: str) -> "Split":
        pick = [int(i) for i in indices]
        return Split(
            name=name,
            source=self.source,
            texts=[self.texts[i] for i in pick],
            labels=[self.labels[i] for i in pick],
            source_rows=[self.source_rows[i] for i in pick],
            text_pairs=[self.text_pairs[i] for i in pick] if self.text_pairs is not None else None,
        )


@dataclass
class ClassificationData:
    """The splits of a classification job and the label names (index = label id)."""

    label_names: list[str]
    train: Split
    validation: Split
    test: Split | None
    notes: list[str] = field(default_factory=list)


def label_name(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def read_split(path: Path, config: DataConfig, name: str) -> tuple[pd.DataFrame, list[str]]:
    frame = read_table(path)
    wanted = [config.text_column, config.label_column] + ([config.text_pair_column] if config.text_pair_column else [])
    columns = [c for c in frame.columns if c != SOURCE_ROW]
    for key, column in (("text_column", config.text_column), ("label_column", config.label_column),
                        ("text_pair_column", config.text_pair_column)):
        if column and column not in frame.columns:
            raise UserError(f"{path}: no column '{column}' (data.{key}); the file has columns: "
                            f"{', '.join(map(str, columns))}. Set data.{key} to one of them")
    frame = frame[wanted + [SOURCE_ROW]].copy()
    notes: list[str] = []

    missing_label = frame[config.label_column].isna() | (frame[config.label_column].astype(str).str.strip() == "")
    if missing_label.any():
        rows = frame.loc[missing_label, SOURCE_ROW].tolist()
        raise UserError(f"{path}: {len(rows)} row(s) without a label in column '{config.label_column}' "
                        f"(rows {format_rows(rows)}); fill them in or remove them")

    text_columns = [config.text_column] + ([config.text_pair_column] if config.text_pair_column else [])
    empty = pd.Series(False, index=frame.index)
    for column in text_columns:
        values = frame[column]
        empty |= values.isna() | (values.astype(str).str.strip() == "")
    if empty.any():
        rows = frame.loc[empty, SOURCE_ROW].tolist()
        if config.on_empty == "error":
            raise UserError(f"{path}: {len(rows)} empty or whitespace-only text(s) at rows {format_rows(rows)}; "
                            "fix or remove them, or set data.on_empty: drop")
        frame = frame.loc[~empty]
        notes.append(f"{name}: dropped {len(rows)} empty text(s) at rows {format_rows(rows)} (data.on_empty: drop)")
        if len(frame) == 0:
            raise UserError(f"{path}: every text is empty")
    return frame, notes


def format_rows(rows: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def to_split(frame: pd.DataFrame, path: Path, config: DataConfig, name: str,
              label_ids: dict[str, int]) -> Split:
    labels = [label_name(v) for v in frame[config.label_column].tolist()]
    unknown = sorted(set(labels) - set(label_ids))
    if unknown:
        raise UserError(f"{path}: label(s) {', '.join(repr(u) for u in unknown[:10])} do not occur in the train set, "
                        "so the model cannot learn them; add examples of them to train or remove these rows")
    return Split(
        name=name,
        source=path,
        texts=frame[config.text_column].astype(str).tolist(),
        labels=[label_ids[label] for label in labels],
        source_rows=frame[SOURCE_ROW].astype(int).tolist(),
        text_pairs=frame[config.text_pair_column].astype(str).tolist() if config.text_pair_column else None,
    )


def sorted_labels(values: list[str]) -> list[str]:
    try:
        return sorted(values, key=lambda v: float(v))
    except ValueError:
        return sorted(values)


def stratified_split(split: Split, fraction: float, seed: int, label_names: list[str]) -> tuple[Split, Split]:
    """Split off ``fraction`` of ``split`` keeping label proportions; clear errors when impossible."""
    from sklearn.model_selection import train_test_split

    counts = np.bincount(split.labels, minlength=len(label_names))
    too_few = [label_names[i] for i, c in enumerate(counts) if c < 2]
    if too_few:
        shown = ", ".join(repr(n) for n in too_few[:10])
        raise UserError(f"{split.source}: label(s) {shown} have fewer than 2 rows, too few for a stratified "
                        "validation split; add rows, remove those labels, or give data.validation")
    n_classes = len(label_names)
    n_validation = max(math.ceil(fraction * len(split)), n_classes)
    if len(split) - n_validation < n_classes:
        raise UserError(f"{split.source}: {len(split)} rows are too few to hold out a validation set with every one "
                        f"of the {n_classes} labels; add rows or give data.validation")
    indices = np.arange(len(split))
    train_idx, val_idx = train_test_split(indices, test_size=n_validation, random_state=seed, stratify=split.labels)
    return split.subset(sorted(train_idx), "train"), split.subset(sorted(val_idx), "validation")
