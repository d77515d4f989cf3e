"""The README's test command must pass in a bare clone, which has no ``../shared/data`` beside it: every test
that reads that folder goes through the ``shared_data`` fixture (and skips without it), and nothing reads it at
collection time."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPOSITORY, REQUIRE_SHARED_DATA

TESTS = REPOSITORY / "tests"
# Any spelling by which a test could reach the data folder without the fixture.
DIRECT_READ = re.compile(r"SHARED_DATA|shared_data_folder|shared/data|[\"']shared[\"']")


def test_only_the_fixture_reaches_the_shared_data_folder():
    offenders = [f"{path.name}:{number}: {line.strip()}"
                 for path in sorted(TESTS.glob("*.py")) if path.name not in {"conftest.py", Path(__file__).name}
                 for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
                 if DIRECT_READ.search(line)]
    assert not offenders, ("read ../shared/data through the `shared_data` fixture (it skips in a bare clone):\n"
                           + "\n".join(offenders))


def test_suite_collects_and_data_tests_skip_without_the_shared_folder(tmp_path):
    """The whole suite collected as in a bare clone (the data folder pointed at an empty one); the tests that
    need the data then run and must all skip, with the reason, and none fail."""
    environment = {**os.environ, "TUNEFORGE_SHARED_DATA": str(tmp_path / "no-shared-data")}
    environment.pop(REQUIRE_SHARED_DATA, None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                             "-m", "needs_shared_data", str(TESTS)],
                            cwd=REPOSITORY, env=environment, capture_output=True, text=True, timeout=600)
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-2000:]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert re.search(r"\d+ skipped", summary) and not re.search(r"passed|failed|error", summary), summary
    assert "needs ../shared/data/" in result.stdout, result.stdout[-2000:]
