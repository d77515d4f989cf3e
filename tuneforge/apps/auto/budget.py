"""The clock of ``tuneforge auto``: the whole command (model loading included) stays within ``--minutes``.

:class:`Budget` counts the seconds of each phase (data facts, plan, search, finish, write-up) from one start,
and answers how much time is left. :class:`TrialClock` learns what a trial costs: first from ``plan``'s
estimate of an epoch, then from the trials measured (their model loading apart, per method), so the search
stops starting trials while one more and the finishing step still fit.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

# Until a method has run one trial: a trial's model loading, save and validation, in seconds, beyond its epochs.
FIRST_GUESS_OVERHEAD_S = 5.0
SAFETY = 1.25  # estimates are multiplied by this before a trial is started: shared machines are noisy


class Budget:
    """Seconds spent per phase and seconds left of ``minutes``, all from one start."""

    def __init__(self, minutes: float, started: float | None = None) -> None:
        self.total_s = 60.0 * minutes
        self.started = time.perf_counter() if started is None else started
        self.phases: dict[str, float] = {}

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.total_s - self.elapsed()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Add the seconds the ``with`` block takes to phase ``name``."""
        began = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = round(self.phases.get(name, 0.0) + time.perf_counter() - began, 2)


@dataclass
class TrialClock:
    """What one epoch and a trial's fixed costs take, per method: planned first, measured once a trial ran."""

    planned_epoch_s: dict[str, float] = field(default_factory=dict)  # plan's estimate on the trials' rows
    measured_epoch_s: dict[str, float] = field(default_factory=dict)
    overhead_s: float | None = None  # measured: loading, saving, the integrity gate

    def epoch_seconds(self, method: str) -> float | None:
        """One epoch of ``method`` on the trials' rows: measured, else the plan's scaled by how far the plan was
        off for a method measured already, else None (nothing known)."""
        if method in self.measured_epoch_s:
            return self.measured_epoch_s[method]
        ratios = [self.measured_epoch_s[m] / self.planned_epoch_s[m] for m in self.measured_epoch_s
                  if self.planned_epoch_s.get(m)]
        if method in self.planned_epoch_s:
            return self.planned_epoch_s[method] * (max(ratios) if ratios else 1.0)
        if self.measured_epoch_s:  # no plan: the slowest method measured so far
            return max(self.measured_epoch_s.values())
        return None

    def trial_seconds(self, method: str, epochs: int) -> float | None:
        """A whole trial of ``method`` for ``epochs``, safety margin included; None when nothing is known yet."""
        epoch = self.epoch_seconds(method)
        if epoch is None:
            return None
        overhead = self.overhead_s if self.overhead_s is not None else FIRST_GUESS_OVERHEAD_S
        return SAFETY * (overhead + epochs * epoch)

    def record(self, method: str, wall_s: float, load_s: float, epochs_run: int, train_s: float) -> None:
        """Learn from a finished (or pruned) trial: its wall time, model loading, epochs and training seconds."""
        if epochs_run <= 0:
            return
        per_epoch = max(train_s, 1e-3) / epochs_run
        overhead = max(wall_s - train_s, load_s)
        # an epoch's validation and checkpoint are part of the overhead measured here; spread it per epoch
        per_epoch += max(overhead - load_s, 0.0) / (epochs_run + 1)
        previous = self.measured_epoch_s.get(method)
        self.measured_epoch_s[method] = per_epoch if previous is None else max(previous, per_epoch) * 0.5 + \
            min(previous, per_epoch) * 0.5
        self.overhead_s = max(self.overhead_s or 0.0, load_s + (overhead - load_s) / (epochs_run + 1))
