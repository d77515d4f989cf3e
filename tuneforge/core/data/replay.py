"""Rehearsal data for continual fine-tuning: a stratified sample of an earlier run's training rows, and
training batches that mix a fixed share of those old rows into every batch of the new data.

Data only: which rows, in which batches. The model, the loss and the run that the rows came from are the
business of :mod:`tuneforge.core.engine.continual`.
"""

from __future__ import annotations

import math
import random

import numpy as np


def stratified_sample(labels: list[int], size: int, seed: int) -> list[int]:
    """Indices of ``size`` rows (all of them when there are fewer), each label's share as in ``labels``.

    Every label keeps at least one row while ``size`` allows; the remaining places go to the labels with the
    largest fractional remainders (largest-remainder apportionment), so the sample's label counts differ from
    the exact proportions by less than one row. Seeded: the same call returns the same rows."""
    if size >= len(labels):
        return list(range(len(labels)))
    generator = np.random.default_rng(seed)
    by_label: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(index)
    names = sorted(by_label)
    quotas = {name: size * len(by_label[name]) / len(labels) for name in names}
    counts = {name: min(len(by_label[name]), max(1, math.floor(quotas[name]))) if size >= len(names)
              else 0 for name in names}
    if size < len(names):  # fewer places than labels: one row each for the most frequent labels
        for name in sorted(names, key=lambda n: (-len(by_label[n]), n))[:size]:
            counts[name] = 1
    left = size - sum(counts.values())
    by_remainder = sorted(names, key=lambda n: (-(quotas[n] - math.floor(quotas[n])), n))
    while left > 0:
        grew = False
        for name in by_remainder:
            if left and counts[name] < len(by_label[name]):
                counts[name] += 1
                left -= 1
                grew = True
        if not grew:
            break
    while left < 0:  # the one-row minimum overshot: take rows back from the largest labels
        name = max(names, key=lambda n: (counts[n], n))
        counts[name] -= 1
        left += 1
    chosen = [int(i) for name in names for i in generator.choice(by_label[name], counts[name], replace=False)]
    return sorted(chosen)


def old_rows_per_batch(batch_size: int, share: float) -> int:
    """How many places of a batch of ``batch_size`` the old rows take: ``round(share * batch_size)``, at least one
    and at most ``batch_size - 1`` (every batch still carries new rows)."""
    return min(batch_size - 1, max(1, round(share * batch_size)))


def replay_batch_count(new_rows: int, batch_size: int, share: float) -> int:
    """Batches of one replay epoch: every new row once, ``batch_size - old_rows_per_batch`` of them per batch."""
    return math.ceil(new_rows / (batch_size - old_rows_per_batch(batch_size, share)))


def replay_batches(new_rows: int, old_rows: int, batch_size: int, share: float,
                   generator: random.Random) -> list[list[int]]:
    """One epoch's training batches over a split whose first ``new_rows`` indices are new rows and whose next
    ``old_rows`` are old ones: every new row once (shuffled), and ``old_rows_per_batch(batch_size, share)`` old
    rows in every full batch (the last batch gets the same share of its size). The old rows are drawn without
    repetition until all were used, then reshuffled. Drawn from ``generator`` only, so a resumed run replays the
    same batches."""
    if old_rows < 1:
        raise ValueError("replay needs at least one old row")
    per_batch_old = old_rows_per_batch(batch_size, share)
    per_batch_new = batch_size - per_batch_old
    new_order = list(range(new_rows))
    generator.shuffle(new_order)
    old_pool: list[int] = []

    def next_old() -> int:
        if not old_pool:
            old_pool.extend(range(new_rows, new_rows + old_rows))
            generator.shuffle(old_pool)
        return old_pool.pop()

    batches = []
    for start in range(0, new_rows, per_batch_new):
        new_part = new_order[start:start + per_batch_new]
        old_count = per_batch_old if len(new_part) == per_batch_new else max(
            1, round(share * len(new_part) / (1 - share)))
        batch = new_part + [next_old() for _ in range(old_count)]
        generator.shuffle(batch)
        batches.append(batch)
    return batches
