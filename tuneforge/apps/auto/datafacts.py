"""What ``tuneforge auto`` reads from the data before it chooses anything: the task, the label counts and
their imbalance, the token lengths, and the settings they imply (``data.max_length``, class weights).

Each setting comes with the sentence that explains it; ``auto.md`` prints them.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from tuneforge.base.errors import UserError
from tuneforge.base.models import load_tokenizer, resolve_model
from tuneforge.base.tables import read_table

# A second text column under one of these names makes a text-pair task (NLI, paraphrase, similarity).
PAIR_COLUMNS = ("text_pair", "sentence2", "hypothesis", "text_b", "question2")
LENGTH_COVERAGE = 0.99  # data.max_length covers this share of the rows without truncation
LENGTH_SAMPLE = 4000  # rows tokenized to measure lengths (a seeded sample of larger files)
MIN_MAX_LENGTH = 16
CLASS_WEIGHT_IMBALANCE = 3.0  # largest / smallest class count from which the loss weighs classes ("balanced")


@dataclass
class DataFacts:
    """The facts of the training file and the settings derived from them (with their reasons)."""

    train_file: str
    rows: int
    task: str
    text_column: str
    text_pair_column: str | None
    label_column: str
    label_counts: dict[str, int]
    imbalance: float
    length_percentiles: dict[str, int]
    rows_measured: int
    max_length: int
    max_length_coverage: float
    class_weights: str
    settings: dict[str, Any] = field(default_factory=dict)  # recipe keys auto sets from the data
    reasons: dict[str, str] = field(default_factory=dict)  # recipe key -> one sentence why

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_data_facts(raw: dict[str, Any], fixed: set[str], seed: int = 42) -> DataFacts:
    """Read ``raw``'s training file (a recipe as a dict, paths resolved) and derive the data settings.

    ``fixed``: dotted recipe keys the user set (in the recipe or with ``--set``); auto keeps their values."""
    data = raw.get("data") or {}
    train_path = data.get("train")
    if not train_path:
        raise UserError("auto: the recipe needs `data: {train: FILE}` (and `model:`); nothing else is required")
    frame = read_table(train_path)
    if frame.empty:
        raise UserError(f"{train_path}: has no rows; auto needs labelled training rows")
    text_column = data.get("text_column", "text")
    if text_column not in frame.columns:
        raise UserError(f"{train_path}: no column '{text_column}' (data.text_column); columns: "
                        f"{', '.join(map(str, frame.columns))}")
    settings: dict[str, Any] = {}
    reasons: dict[str, str] = {}

    label_column = data.get("label_column", "label")
    if label_column not in frame.columns and "data.label_column" not in fixed and "labels" in frame.columns:
        label_column = "labels"
        settings["data.label_column"] = label_column
        reasons["data.label_column"] = f"{train_path} has no column 'label' but a column 'labels'."
    if label_column not in frame.columns:
        raise UserError(f"{train_path}: no label column '{label_column}' (data.label_column); columns: "
                        f"{', '.join(map(str, frame.columns))}")
    labels = frame[label_column].tolist()

    task = raw.get("task")
    if task is None:
        is_list = [isinstance(value, (list, tuple, np.ndarray)) for value in labels]
        task = "multilabel" if any(is_list) else "classification"
        settings["task"] = task
        reasons["task"] = ("the label column holds lists of labels, so each row may have several: multi-label."
                           if task == "multilabel" else "each row has one label: single-label classification.")
    if task not in ("classification", "multilabel"):
        raise UserError(f"auto: task {task} is not supported yet (classification and multilabel only)")

    pair_column = data.get("text_pair_column")
    if pair_column is None and "data.text_pair_column" not in fixed:
        pair_column = next((name for name in PAIR_COLUMNS if name in frame.columns), None)
        if pair_column is not None:
            settings["data.text_pair_column"] = pair_column
            reasons["data.text_pair_column"] = (f"{train_path} has a second text column '{pair_column}': the model "
                                                "reads each row as a pair of texts.")

    counts: dict[str, int] = {}
    for value in labels:
        for label in (value if isinstance(value, (list, tuple, np.ndarray)) else [value]):
            counts[str(label)] = counts.get(str(label), 0) + 1
    counts = dict(sorted(counts.items(), key=lambda item: -item[1]))
    imbalance = max(counts.values()) / max(min(counts.values()), 1) if counts else 1.0

    class_weights = str((raw.get("train") or {}).get("class_weights", "none"))
    if task == "classification" and "train.class_weights" not in fixed:
        class_weights = "balanced" if imbalance >= CLASS_WEIGHT_IMBALANCE else "none"
        settings["train.class_weights"] = class_weights
        smallest = min(counts, key=counts.get)
        reasons["train.class_weights"] = (
            f"the largest class has {imbalance:.1f}x the rows of the smallest ('{smallest}', {counts[smallest]} "
            f"rows); from {CLASS_WEIGHT_IMBALANCE:g}x the loss weighs classes inversely to their size, so a small "
            "class is not ignored." if class_weights == "balanced" else
            f"the classes are balanced enough (largest / smallest = {imbalance:.1f}x, below "
            f"{CLASS_WEIGHT_IMBALANCE:g}x): every row weighs the same.")

    lengths = token_lengths(raw["model"], frame, text_column, pair_column, seed)
    percentiles = {f"p{q}": int(math.ceil(np.percentile(lengths, q))) for q in (50, 90, 95, 99)}
    percentiles["max"] = int(max(lengths))
    if "data.max_length" in fixed:
        max_length = int(data.get("max_length", 128))
    else:
        limit = model_length_limit(raw["model"])
        wanted = int(math.ceil(np.percentile(lengths, 100 * LENGTH_COVERAGE) / 8) * 8)
        max_length = max(MIN_MAX_LENGTH, min(wanted, limit))
        settings["data.max_length"] = max_length
    coverage = float(np.mean(np.asarray(lengths) <= max_length))
    reasons["data.max_length"] = (
        f"{coverage:.1%} of {len(lengths)} measured rows fit in {max_length} tokens (p50 {percentiles['p50']}, "
        f"p99 {percentiles['p99']}, longest {percentiles['max']}); longer rows are truncated, shorter batches "
        "cost less." if "data.max_length" not in fixed else
        f"set by you; it covers {coverage:.1%} of the measured rows.")
    return DataFacts(train_file=str(train_path), rows=len(frame), task=task, text_column=text_column,
                     text_pair_column=pair_column, label_column=label_column, label_counts=counts,
                     imbalance=round(float(imbalance), 3), length_percentiles=percentiles,
                     rows_measured=len(lengths), max_length=max_length, max_length_coverage=round(coverage, 4),
                     class_weights=class_weights, settings=settings, reasons=reasons)


def token_lengths(model: str, frame, text_column: str, pair_column: str | None, seed: int) -> list[int]:
    """Tokens per row (special tokens included, pairs together) of a seeded sample of at most LENGTH_SAMPLE rows."""
    tokenizer = load_tokenizer(resolve_model(model))
    indices = list(range(len(frame)))
    if len(indices) > LENGTH_SAMPLE:
        indices = sorted(random.Random(seed).sample(indices, LENGTH_SAMPLE))
    texts = [str(frame[text_column].iloc[i]) for i in indices]
    pairs = [str(frame[pair_column].iloc[i]) for i in indices] if pair_column else None
    encoded = tokenizer(texts, pairs, truncation=False) if pairs else tokenizer(texts, truncation=False)
    return [len(ids) for ids in encoded["input_ids"]]


def model_length_limit(model: str) -> int:
    """The longest input the model takes (its position embeddings), 512 when the tokenizer does not say."""
    tokenizer = load_tokenizer(resolve_model(model))
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 100_000 else 512


def stratified_sample(frame, label_column: str, rows: int, seed: int):
    """About ``rows`` rows of ``frame`` with every single label's share kept (each label at least once); a plain
    seeded sample for multi-label lists."""
    if rows >= len(frame):
        return frame
    if frame[label_column].map(lambda value: isinstance(value, (list, tuple, np.ndarray))).any():
        return frame.sample(n=rows, random_state=seed)
    fraction = rows / len(frame)
    parts = [group.sample(n=max(1, round(len(group) * fraction)), random_state=seed)
             for _, group in frame.groupby(frame[label_column].astype(str), sort=False)]
    return pd.concat(parts).sample(frac=1.0, random_state=seed)
