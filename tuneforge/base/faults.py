"""Fault injection for the reliability tests: kill this process with SIGKILL at a named point.

``TUNEFORGE_FAULT=POINT:N`` makes the ``N``-th call (1-based, counted in this process) of
:func:`fault_point` with that ``POINT`` send SIGKILL to the process itself, exactly as ``kill -9`` from
outside would, but at a known place instead of a moment picked by a timer. Several faults may be given,
separated by commas. Unset (the normal case), :func:`fault_point` is one environment lookup and returns.

The points (docs/reliability.md lists the test that kills at each one):

``train-step``        after an optimizer step, mid-epoch (:mod:`tuneforge.core.engine.loop`)
``checkpoint-write``  inside a checkpoint's write: its weights are on disk, its state and manifest are not
                      (:mod:`tuneforge.core.engine.checkpoint`)
``validation``        at the start of an epoch's validation, before the epoch's checkpoint
``model-save``        after the method wrote the final model, before the integrity gate recorded it
                      (:mod:`tuneforge.base.integrity`)
``after-training``    after the model is saved, while the test split is evaluated (:mod:`tuneforge.cli.commands`)
``export-write``      after an export wrote its model file, before its report (:mod:`tuneforge.apps.export`)

This is a testing aid, not a user feature: nothing in a normal run sets the variable.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

FAULT_VARIABLE = "TUNEFORGE_FAULT"
POINTS = ("train-step", "checkpoint-write", "validation", "model-save", "after-training", "export-write")

_calls: Counter[str] = Counter()


def parse_faults(spec: str) -> dict[str, int]:
    """``"train-step:5,validation:1"`` -> ``{"train-step": 5, "validation": 1}``; ValueError on a bad spec."""
    faults: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        point, _, count = item.partition(":")
        if point not in POINTS or not count.isdigit() or int(count) < 1:
            raise ValueError(f"{FAULT_VARIABLE}={spec!r}: each fault is POINT:N with N >= 1 and POINT one of "
                             f"{', '.join(POINTS)}")
        faults[point] = int(count)
    return faults


def fault_point(point: str) -> None:
    """Kill this process with SIGKILL if ``TUNEFORGE_FAULT`` asks for it at this call of ``point``."""
    spec = os.environ.get(FAULT_VARIABLE)
    if not spec:
        return
    _calls[point] += 1
    if parse_faults(spec).get(point) == _calls[point]:
        os.kill(os.getpid(), signal.SIGKILL)
