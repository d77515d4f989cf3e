"""One worker process of ``tuneforge search --jobs J``: ``python -m tuneforge.apps.search.worker SEARCH_JSON INDEX``.

Each worker opens the same study in the same storage and runs trials until the study holds ``--trials``
completed or pruned trials; Optuna's storage hands out the trials, nothing here coordinates the workers.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tuneforge.base.errors import UserError
from tuneforge.base.quiet import quiet_libraries
from tuneforge.apps.search.study import SearchSpec, run_worker


def log(message: str) -> None:
    """One progress line on stderr, flushed at once: the workers share the search's terminal."""
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str]) -> int:
    """Run trials of the study in ``argv[0]`` (a search.json) as worker ``argv[1]``; the exit code."""
    if len(argv) != 2:
        print("usage: python -m tuneforge.apps.search.worker SEARCH_JSON WORKER_INDEX", file=sys.stderr)
        return 2
    quiet_libraries()
    try:
        run_worker(SearchSpec.load(Path(argv[0])), int(argv[1]), log=lambda message: log(f"[worker {argv[1]}] {message}"))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
