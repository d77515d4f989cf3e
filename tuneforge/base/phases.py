"""Wall seconds per phase of a command (``run.json`` → ``phases``): where a run's time went besides training.

``tuneforge train`` opens a :class:`PhaseClock` with :func:`recording`; code anywhere below it times its part with
``with phase("validation"):`` (or :func:`add_phase` for a span it measured itself) without the clock being passed
down. Outside ``recording`` both are no-ops, so library callers of the loop pay nothing.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterator
from contextlib import contextmanager

_ACTIVE: contextvars.ContextVar[PhaseClock | None] = contextvars.ContextVar("tuneforge_phase_clock", default=None)


class PhaseClock:
    """Seconds per phase name, summed over every span of that phase, in the order phases first appeared."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last_lap = time.perf_counter()

    def lap(self, name: str) -> None:
        """Add the time since the clock started (or since the previous lap) to phase ``name``."""
        now = time.perf_counter()
        self.add(name, now - self.last_lap)
        self.last_lap = now

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def timed(self, name: str) -> Iterator[None]:
        """Time the block into phase ``name`` of this clock (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def as_dict(self) -> dict[str, float]:
        return {name: round(value, 3) for name, value in self.seconds.items()}


@contextmanager
def recording(clock: PhaseClock) -> Iterator[PhaseClock]:
    """Within the block, :func:`phase` and :func:`add_phase` record into ``clock``."""
    token = _ACTIVE.set(clock)
    try:
        yield clock
    finally:
        _ACTIVE.reset(token)


def add_phase(name: str, seconds: float) -> None:
    """Add ``seconds`` to phase ``name`` of the clock being recorded into (none: nothing)."""
    clock = _ACTIVE.get()
    if clock is not None:
        clock.add(name, seconds)


@contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as (part of) phase ``name``; also when it raises."""
    started = time.perf_counter()
    try:
        yield
    finally:
        add_phase(name, time.perf_counter() - started)

