"""``compare`` reads each method's peak memory from the child itself (its VmHWM), not from ``wait4``'s
``ru_maxrss``, which carries the parent's size across the fork (docs/reliability.md §7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneforge.apps.compare import run_measured

PARENT_MB = 600


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="VmHWM is Linux's")
def test_peak_memory_is_the_childs_own_not_the_parents(tmp_path):
    ballast = bytearray(PARENT_MB * 2**20)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # touched: resident in this (the parent) process
    code, peak_mb = run_measured(["--version"], tmp_path / "child.log")
    assert code == 0 and "tuneforge" in (tmp_path / "child.log").read_text()
    assert peak_mb is not None and 5 < peak_mb < PARENT_MB / 3, peak_mb  # `tuneforge --version` needs ~20-60 MB

    del ballast
