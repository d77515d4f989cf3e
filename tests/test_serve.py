"""tuneforge serve on a tiny trained run: a real server process on 127.0.0.1, a real HTTP client (httpx),
bad requests, request batching, and a bounded load test (2,000 requests, 8 concurrent)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, synthetic_rows
from tiny_runs import shared_tiny_run

from tuneforge.apps.export.serve import BadRequest, Limits, parse_request

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from serve_load import run_load  # noqa: E402

httpx = pytest.importorskip("httpx")
MAX_TEXTS, MAX_CHARS = 16, 300
TEXTS = [r["text"] for r in synthetic_rows(12, seed=21)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model) -> Path:
    return shared_tiny_run(tmp_path_factory, tiny_model)


@pytest.fixture(scope="module")
def server(tiny_run, tmp_path_factory):
    """`python -m tuneforge serve RUN --port P` in its own process; yields the base URL."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    with log.open("w") as stream:
        process = subprocess.Popen([sys.executable, "-m", "tuneforge", "serve", str(tiny_run), "--port", str(port),
                                    "--max-texts", str(MAX_TEXTS), "--max-text-chars", str(MAX_CHARS),
                                    "--threads", "1"],  # the load test's clients need the other core
                                   stdout=stream, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}: {log.read_text()}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server did not start in 120 s: {log.read_text()}")
            time.sleep(0.25)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert "listening on http://127.0.0.1:" in log.read_text()


def test_health_and_predict_match_the_runs_predictions(server, tiny_run):
    from tuneforge.core.tasks.predictor import Predictor

    health = httpx.get(f"{server}/health").json()
    assert health["status"] == "ok" and health["labels"] == ["negative", "positive"]
    assert health["model"] == "run folder, PyTorch fp32" and health["max_texts"] == MAX_TEXTS
    response = httpx.post(f"{server}/predict", json={"texts": TEXTS})
    assert response.status_code == 200
    predictions = response.json()["predictions"]
    assert len(predictions) == len(TEXTS)
    probabilities = Predictor(tiny_run).probabilities(TEXTS)
    for prediction, expected in zip(predictions, probabilities):
        assert prediction["label"] == ["negative", "positive"][int(expected.argmax())]
        assert sum(prediction["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert prediction["probabilities"]["positive"] == pytest.approx(float(expected[1]), abs=1e-4)
        assert prediction["confidence"] == max(prediction["probabilities"].values())


@pytest.mark.parametrize("body,status,message", [
    (b'{"texts": ["unterminated', 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    (b"\xff\xfe", 400, "not valid JSON"),
    (b'["a list"]', 422, "must be a JSON object"),
    (b'{"text": ["typo in the field name"]}', 422, "unknown field(s) 'text'"),
    (b"{}", 422, "missing field 'texts'"),
    (b'{"texts": "not a list"}', 422, "must be a list of strings"),
    (b'{"texts": []}', 422, "'texts' is empty"),
    (b'{"texts": ["fine", 3]}', 422, "texts[1] must be a string"),
    (b'{"texts": ["fine", "   "]}', 422, "texts[1] is empty"),
    (b'{"texts": ["fine"], "text_pairs": ["x"]}', 422, "drop 'text_pairs'"),
    (('{"texts": [%s]}' % ",".join(['"good"'] * (MAX_TEXTS + 1))).encode(), 413, f"at most {MAX_TEXTS} per request"),
    (('{"texts": ["%s"]}' % ("a" * (MAX_CHARS + 1))).encode(), 413, f"the limit is {MAX_CHARS}"),
    (b'{"texts": ["' + b"a" * 100_000 + b'"]}', 413, "the limit is"),
], ids=["truncated-json", "empty-body", "not-utf8", "list-body", "unknown-field", "missing-texts", "texts-not-list",
        "empty-list", "non-string", "blank-text", "pairs-for-single-text-model", "too-many-texts", "text-too-long",
        "body-too-large"])
def test_bad_requests_get_a_4xx_and_one_clear_line(server, body, status, message):
    response = httpx.post(f"{server}/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert httpx.get(f"{server}/health").status_code == 200  # still up


def test_wrong_path_and_method(server):
    assert httpx.get(f"{server}/predict").status_code == 405
    response = httpx.get(f"{server}/nothing-here")
    assert response.status_code == 404 and "POST /predict" in response.json()["error"]


def test_load_2000_requests_8_concurrent_without_errors_and_with_batching(server, capsys):
    before = httpx.get(f"{server}/health").json()
    result = run_load(server, requests=2000, concurrency=8, deadline_s=180)
    after = httpx.get(f"{server}/health").json()
    with capsys.disabled():
        print(f"\nserve load test (tiny model, 127.0.0.1): {result['requests']} requests, {result['concurrency']} "
              f"concurrent, {result['seconds']} s, {result['requests_per_s']} requests/s, p50 "
              f"{result['latency_p50_ms']} ms, p95 {result['latency_p95_ms']} ms, errors {result['errors']}; "
              f"{after['requests'] - before['requests']} requests in {after['batches'] - before['batches']} "
              "forward passes")
    assert result["requests"] == 2000 and result["errors"] == 0, result
    assert result["statuses"] == {"200": 2000}
    assert after["requests"] - before["requests"] == 2000
    assert after["batches"] - before["batches"] < 2000  # concurrent requests shared forward passes


def test_load_generator_only_targets_loopback():
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://192.0.2.1:8000", requests=1)


def test_parse_request_for_sentence_pair_models():
    limits = Limits(max_texts=4, max_text_chars=50)
    assert parse_request(b'{"texts": ["a"], "text_pairs": ["b"]}', True, limits) == (["a"], ["b"])
    with pytest.raises(BadRequest, match="send 'text_pairs' too"):
        parse_request(b'{"texts": ["a"]}', True, limits)
    with pytest.raises(BadRequest, match="2 items but 'text_pairs' has 1"):
        parse_request(b'{"texts": ["a", "b"], "text_pairs": ["c"]}', True, limits)


def test_serve_fails_in_one_line_on_bad_folders_and_busy_ports(tiny_run, tmp_path):
    code, _, err = run_cli("serve", str(tmp_path / "missing"))
    assert code == 1 and "folder not found" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("serve", str(tmp_path / "empty"))
    assert code == 1 and "neither a run folder" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, _, err = run_cli("serve", str(tiny_run), "--port", str(busy.getsockname()[1]))
    assert code == 1 and "cannot listen on 127.0.0.1" in err and "choose another --port" in err


def test_batcher_answers_each_request_with_its_own_rows(tiny_run):
    """Requests merged into one forward pass get back their own rows, in order."""
    import asyncio

    from tuneforge.apps.export import load_classifier
    from tuneforge.apps.export.serve import Batcher

    classifier = load_classifier(tiny_run)
    expected = classifier.probabilities(TEXTS)

    async def main():
        batcher = Batcher(classifier, max_batch=8)
        await batcher.start()
        sizes = [1, 3, 2, 5, 1]
        starts = np.cumsum([0] + sizes[:-1])
        results = await asyncio.gather(*[batcher.probabilities(TEXTS[s:s + n], None) for s, n in zip(starts, sizes)])
        await batcher.stop()
        return results, sizes, starts, batcher.batches

    results, sizes, starts, batches = asyncio.run(main())
    for result, start, size in zip(results, starts, sizes):
        np.testing.assert_allclose(result, expected[start:start + size], atol=1e-5)
    assert batches < len(sizes)  # queued requests shared forward passes, none over max_batch
