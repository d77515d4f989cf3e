"""Recipes, runs and a live server for the dashboard tests (tests/test_ui.py, tests/test_ui_browser.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from conftest import make_tiny_bert, run_cli, synthetic_rows, write_jsonl

# Runs launched from the dashboard: one thread (bit-exact resume, as in tests/test_resume.py), a loss line per
# optimizer step, and enough steps (12 epochs of 27) that a curve can be seen growing and a stop lands mid-run.
LAUNCHED_TRAIN = ("{epochs: 12, batch_size: 8, learning_rate: 3.0e-3, warmup_ratio: 0.0, early_stopping: null, "
                  "log_every_steps: 1, checkpoint_every_steps: 1000, num_threads: 1}")
FINISHED_TRAIN = ("{epochs: 2, batch_size: 16, learning_rate: %s, warmup_ratio: 0.0, early_stopping: null, "
                  "log_every_steps: 2, num_threads: 1}")


def recipe_text(name: str, model: Path, train: str, method: str = "full") -> str:
    return f"""name: {name}
model: {model}
data: {{train: train.jsonl, test: test.jsonl, max_length: 32}}
method: {{name: {method}}}
train: {train}
"""


def write_job(folder: Path) -> Path:
    """A recipe folder: the tiny BERT (inside it), synthetic train/test files, and recipes — ``launch.yaml``
    (the dashboard starts it), ``quick-a.yaml`` / ``quick-b.yaml`` (two short runs differing in learning rate
    and method) and ``bad.yaml`` (a negative learning rate)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = make_tiny_bert(folder / "tiny-bert")
    write_jsonl(folder / "train.jsonl", synthetic_rows(240, seed=1))
    write_jsonl(folder / "test.jsonl", synthetic_rows(60, seed=2))
    (folder / "launch.yaml").write_text(recipe_text("launched", model, LAUNCHED_TRAIN), encoding="utf-8")
    (folder / "quick-a.yaml").write_text(recipe_text("quick-a", model, FINISHED_TRAIN % "3.0e-3"), encoding="utf-8")
    (folder / "quick-b.yaml").write_text(recipe_text("quick-b", model, FINISHED_TRAIN % "1.0e-3", method="freeze"),
                                         encoding="utf-8")
    (folder / "bad.yaml").write_text(recipe_text("bad", model, FINISHED_TRAIN % "-0.001"), encoding="utf-8")
    return folder


def train_finished_runs(job: Path, runs: Path) -> list[str]:
    """Train quick-a and quick-b in this process into ``runs``; return their folder names."""
    names = []
    for name in ("quick-a", "quick-b"):
        code, _, err = run_cli("train", str(job / f"{name}.yaml"), "--output", str(runs / name))
        assert code == 0, err
        names.append(name)
    return names


def wait_until(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def run_status(run: Path) -> str | None:
    try:
        return json.loads((run / "run.json").read_text(encoding="utf-8")).get("status")
    except (OSError, ValueError):
        return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LiveServer:
    """The dashboard on uvicorn in a thread, on a free local port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 30, "the dashboard to start", every=0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=90)
