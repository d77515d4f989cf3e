"""tuneforge serve under a bounded mixed load, then a graceful shutdown: 32 concurrent keep-alive clients for a few
seconds on 127.0.0.1, good requests mixed with malformed and oversized ones (every one answered with its expected
status, no 5xx, no broken connection), the server's RSS sampled throughout and bounded; then SIGTERM while a
burst of requests is in flight: every one of them completes with 200 and the server exits 0.
bench/serve_load.py --serve runs the full 30 s version (docs/export.md)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tiny_runs import shared_tiny_run

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serve_load import free_port, graceful_shutdown, run_load, start_server  # noqa: E402

pytest.importorskip("httpx")
CLIENTS, SECONDS = 32, 6
RSS_GROWTH_LIMIT_MIB = 150  # the peak over the server's size when the load began: bodies are capped, none pile up


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model) -> Path:
    return shared_tiny_run(tmp_path_factory, tiny_model)


def test_mixed_load_then_graceful_shutdown(tiny_run, tmp_path, capsys):
    port = free_port()
    # --max-batch 1: one text per forward pass, so the burst below is still running when SIGTERM comes
    server = start_server(str(tiny_run), port, ["--max-texts", "16", "--max-text-chars", "300", "--threads", "1",
                                                "--max-batch", "1"], tmp_path / "server.log")
    url = f"http://127.0.0.1:{port}"
    try:
        load = run_load(url, concurrency=CLIENTS, duration_s=SECONDS, deadline_s=SECONDS + 60, bad_fraction=0.25,
                        oversized_fraction=0.05, server_pid=server.pid)
        shutdown = graceful_shutdown(url, server, requests=32, texts_per_request=16, signal_after_s=0.1)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    rss = load["server_rss"]
    with capsys.disabled():
        print(f"\nserve mixed load (tiny model, 127.0.0.1, {CLIENTS} clients, {load['seconds']} s): "
              f"{load['requests']} requests ({load['by_kind'].get('good', 0)} good), p50 {load['latency_p50_ms']} ms, "
              f"p95 {load['latency_p95_ms']} ms, server errors {load['server_errors']}, unexpected "
              f"{load['unexpected']}; server RSS {rss['start_mib']} -> peak {rss['peak_mib']} MiB; shutdown: "
              f"{shutdown['completed_200']}/{shutdown['in_flight']} in flight completed with 200 "
              f"({shutdown['answered_after_signal']} answered after SIGTERM), exit {shutdown['exit_code']}")

    assert load["server_errors"] == 0 and load["unexpected"] == 0, load["first_failures"]
    kinds = load["by_kind"]
    assert kinds.get("good", 0) > 0 and kinds.get("oversized_declared", 0) + kinds.get("oversized_chunked", 0) > 0
    assert {"not_json", "wrong_shape", "too_many_texts"} <= set(kinds), kinds
    assert set(load["statuses"]) <= {"200", "400", "413", "422"}, load["statuses"]
    assert rss["samples"] >= 5 and rss["peak_mib"] - rss["start_mib"] < RSS_GROWTH_LIMIT_MIB, rss

    assert shutdown["statuses"] == {"200": 32}, shutdown
    assert shutdown["answered_after_signal"] > 0, shutdown  # requests really were in flight when SIGTERM came
    # uvicorn re-raises the SIGTERM once it has shut down gracefully: the status of a process the signal ended
    assert shutdown["exit_code"] in (0, -signal.SIGTERM), (tmp_path / "server.log").read_text()[-2000:]
    assert "error" not in (tmp_path / "server.log").read_text().lower()  # e.g. "Cancel N running task(s)"
