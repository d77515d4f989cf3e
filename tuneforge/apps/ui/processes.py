"""The ``tuneforge train`` child processes started from the dashboard.

A launch is ``python -m tuneforge train RECIPE --set ... --output RUN`` and a resume
``python -m tuneforge train --resume RUN``: the command line's own code paths, so a run started here is the run
the terminal would have made (run folder, checkpoints, report). Stop sends SIGINT, exactly a Ctrl-C: the run
finishes its optimizer step, writes a checkpoint, marks itself ``interrupted`` and can be resumed. Each child
writes its output to ``RUNS/.tuneforge-ui/logs/<run>.log`` (the run folder must be empty when ``train`` starts).

Each child runs in its own session, so a Ctrl-C in the dashboard's terminal does not reach it directly; the
dashboard, stopping, sends each live child one SIGINT and waits for its checkpoint (:meth:`Processes.shutdown`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import tuneforge

STATE_FOLDER = ".tuneforge-ui"  # inside the runs folder; `tuneforge runs` skips it (no run.json)
LOG_TAIL_BYTES = 6000


@dataclass
class Child:
    """One child process and what the page needs to know about it."""

    run: str
    action: str  # "train" or "resume"
    process: subprocess.Popen
    log_path: Path
    started: float
    stop_requested: bool = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class Processes:
    """The dashboard's children, by run folder name (the newest child of a run wins)."""

    def __init__(self, runs_dir: Path) -> None:
        self.runs_dir = runs_dir
        self.state_dir = runs_dir / STATE_FOLDER
        self._children: dict[str, Child] = {}
        self._lock = threading.Lock()

    def train(self, recipe: Path, overrides: list[str], run_dir: Path) -> Child:
        """Start ``tuneforge train RECIPE --set ... --output RUN_DIR``."""
        arguments = ["train", str(recipe), "--output", str(run_dir)]
        for override in overrides:
            arguments += ["--set", override]
        return self._start(run_dir.name, "train", arguments)

    def resume(self, run_dir: Path) -> Child:
        """Start ``tuneforge train --resume RUN_DIR``."""
        return self._start(run_dir.name, "resume", ["train", "--resume", str(run_dir)])

    def _start(self, run: str, action: str, arguments: list[str]) -> Child:
        with self._lock:
            current = self._children.get(run)
            if current is not None and current.alive:
                raise RuntimeError(f"{run}: already running (process {current.process.pid})")
            logs = self.state_dir / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            log_path = logs / f"{run}.log"
            # The child imports the same tuneforge that serves this page, wherever the console script points.
            package_root = str(Path(tuneforge.__file__).resolve().parents[1])
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false",
                   "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
            with log_path.open("a", encoding="utf-8") as log:
                log.write(f"$ tuneforge {' '.join(arguments)}\n")
                log.flush()
                process = subprocess.Popen([sys.executable, "-m", "tuneforge", *arguments], stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                           start_new_session=True)
            child = Child(run=run, action=action, process=process, log_path=log_path, started=time.time())
            self._children[run] = child
            return child

    def get(self, run: str) -> Child | None:
        return self._children.get(run)

    def all(self) -> list[Child]:
        return list(self._children.values())

    def stop(self, run: str) -> Child:
        """SIGINT to the run's child: checkpoint at the end of the optimizer step, then exit (Ctrl-C)."""
        child = self._children.get(run)
        if child is None or not child.alive:
            raise LookupError(f"{run}: no training process started by this dashboard is running for it")
        child.stop_requested = True
        child.process.send_signal(signal.SIGINT)
        return child

    def log_tail(self, run: str) -> str | None:
        """The end of the run's log (every child of the run appends to it), or None when there is none."""
        path = self.state_dir / "logs" / f"{run}.log"
        if not path.is_file():
            return None
        with path.open("rb") as stream:
            stream.seek(max(0, path.stat().st_size - LOG_TAIL_BYTES))
            return stream.read().decode("utf-8", errors="replace")

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop every live child as Ctrl-C would and wait for their checkpoints (then kill what is left)."""
        live = [c for c in self._children.values() if c.alive]
        for child in live:
            child.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout
        for child in live:
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
