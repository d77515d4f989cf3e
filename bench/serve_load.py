"""A bounded load test of ``tuneforge serve`` on this machine: concurrent keep-alive clients send a fixed number of
requests, or as many as they can for a fixed time, optionally mixing bad and oversized requests among the good
ones; reports requests/s, latency percentiles, every status, the server errors (5xx or a broken connection) and
the server process's memory (RSS) while it ran.

    # against a server you started:
    tuneforge serve RUN_OR_EXPORT_DIR --port 8000 &
    python bench/serve_load.py http://127.0.0.1:8000 --requests 2000 --concurrency 8

    # the full test: start the server, 32 clients for 30 s with bad and oversized requests mixed in, sample the
    # server's RSS, then SIGTERM it while a burst of requests is in flight and check that every one completes
    python bench/serve_load.py --serve RUN_OR_EXPORT_DIR --duration 30 --concurrency 32 --bad-fraction 0.2 \\
        --oversized-fraction 0.05

Only loopback URLs are accepted: this is a test of your own server on this machine. Needs httpx and psutil
(``pip install -e '.[dev]'``). tests/test_serve.py and tests/test_serve_load.py run shorter versions in CI.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_TEXTS = ["the film was great", "an awful, boring plot", "quite a lovely story and a fine actor",
                 "the show was really terrible", "nice", "it was a sad and ugly film, very poor"]
RSS_SAMPLE_S = 0.2


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError):
        return False


def request_kinds(limits: dict, texts: list[str], texts_per_request: int) -> dict[str, tuple[int, object]]:
    """Each kind of request the mixed load sends: name -> (the status a correct server answers, a body maker).

    A body maker takes the request's index and returns ``("json", obj)``, ``("bytes", body)`` or ``("chunks",
    list_of_bytes)`` (sent with ``Transfer-Encoding: chunked``, no declared length)."""
    max_texts, max_chars = int(limits.get("max_texts", 64)), int(limits.get("max_text_chars", 5000))
    body_limit = 2 * max_texts * (6 * max_chars + 16) + 4096  # serve.Limits.max_body_bytes
    oversized = b'{"texts": ["' + b"x" * (body_limit + 1024) + b'"]}'
    return {
        "good": (200, lambda i: ("json", {"texts": [texts[(i + k) % len(texts)] for k in range(texts_per_request)]})),
        "not_json": (400, lambda i: ("bytes", b'{"texts": ["unterminated')),
        "wrong_shape": (422, lambda i: ("json", {"texts": "not a list"})),
        "unknown_field": (422, lambda i: ("json", {"text": ["typo in the field name"]})),
        "non_string": (422, lambda i: ("json", {"texts": ["fine", 3]})),
        "too_many_texts": (413, lambda i: ("json", {"texts": ["good"] * (max_texts + 1)})),
        "text_too_long": (413, lambda i: ("json", {"texts": ["a" * (max_chars + 1)]})),
        "oversized_declared": (413, lambda i: ("bytes", oversized)),
        "oversized_chunked": (413, lambda i: ("chunks", [oversized[k:k + 65536]
                                                         for k in range(0, len(oversized), 65536)])),
    }


class RssSampler:
    """The server process's resident memory, sampled every ``RSS_SAMPLE_S`` seconds in a thread."""

    def __init__(self, pid: int | None) -> None:
        self.pid, self.samples, self._stop = pid, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        process = psutil.Process(self.pid)
        while not self._stop.is_set():
            try:
                self.samples.append(process.memory_info().rss)
            except psutil.Error:
                return
            self._stop.wait(RSS_SAMPLE_S)

    def __enter__(self) -> "RssSampler":
        if self.pid:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.pid:
            self._thread.join()

    def summary(self) -> dict | None:
        if not self.samples:
            return None
        mib = [s / 2**20 for s in self.samples]
        half = len(mib) // 2 or 1
        return {"samples": len(mib), "start_mib": round(mib[0], 1), "peak_mib": round(max(mib), 1),
                "end_mib": round(mib[-1], 1), "peak_first_half_mib": round(max(mib[:half]), 1),
                "peak_second_half_mib": round(max(mib[half:] or mib), 1)}


def run_load(url: str, requests: int | None = 2000, concurrency: int = 8, texts: list[str] | None = None,
             texts_per_request: int = 1, deadline_s: float = 120.0, duration_s: float | None = None,
             bad_fraction: float = 0.0, oversized_fraction: float = 0.0, server_pid: int | None = None,
             seed: int = 0) -> dict:
    """Send POST /predict from ``concurrency`` threads: ``requests`` of them, or (``duration_s``) as many as they
    can for that long; stop early at ``deadline_s``. ``bad_fraction`` of the requests are malformed (each kind
    in turn) and ``oversized_fraction`` have a body over the server's limit; each kind's expected status is
    checked. ``server_pid``: sample that process's RSS meanwhile."""
    import httpx

    if not is_loopback(url):
        raise ValueError(f"{url}: not a loopback address; this load test only targets a server on this machine")
    texts = texts or DEFAULT_TEXTS
    limits = httpx.get(f"{url}/health", timeout=30).json() if (bad_fraction or oversized_fraction) else {}
    kinds = request_kinds(limits, texts, texts_per_request)
    bad_kinds = [k for k in kinds if k != "good" and not k.startswith("oversized")]
    oversized_kinds = [k for k in kinds if k.startswith("oversized")]
    counter = iter(range(requests if duration_s is None else sys.maxsize))
    lock = threading.Lock()
    latencies: list[float] = []  # of the good requests
    statuses: dict[str, int] = {}
    by_kind: dict[str, int] = {}
    first_failures: list[str] = []
    server_errors = unexpected = 0
    started = time.monotonic()
    stop_at = started + (min(duration_s, deadline_s) if duration_s is not None else deadline_s)

    def pick(index: int) -> str:
        draw = random.Random(seed * 1_000_003 + index).random()
        if draw < oversized_fraction:
            return oversized_kinds[index % len(oversized_kinds)]
        if draw < oversized_fraction + bad_fraction:
            return bad_kinds[index % len(bad_kinds)]
        return "good"

    def worker() -> None:
        nonlocal server_errors, unexpected
        with httpx.Client(base_url=url, timeout=30.0) as client:
            while time.monotonic() < stop_at:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                kind = pick(index)
                expected, make = kinds[kind]
                form, body = make(index)
                start = time.perf_counter()
                try:
                    if form == "json":
                        response = client.post("/predict", json=body)
                    elif form == "bytes":
                        response = client.post("/predict", content=body, headers={"content-type": "application/json"})
                    else:
                        response = client.post("/predict", content=iter(body),
                                               headers={"content-type": "application/json"})
                    status = str(response.status_code)
                    ok = response.status_code == expected and (
                        kind != "good" or len(response.json()["predictions"]) == texts_per_request) and (
                        kind == "good" or "error" in response.json())
                    broken = response.status_code >= 500
                except Exception as error:  # a refused or broken connection: the server failed this request
                    status, ok, broken = type(error).__name__, False, True
                elapsed = time.perf_counter() - start
                with lock:
                    if kind == "good":
                        latencies.append(elapsed)
                    statuses[status] = statuses.get(status, 0) + 1
                    by_kind[kind] = by_kind.get(kind, 0) + 1
                    server_errors += broken
                    if not ok:
                        unexpected += 1
                        if len(first_failures) < 5:
                            first_failures.append(f"request {index} ({kind}): {status}, expected {expected}")

    with RssSampler(server_pid) as rss:
        threads = [threading.Thread(target=worker) for _ in range(concurrency)]
        clock = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - clock
    latencies.sort()

    def percentile(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else 0.0

    done = sum(by_kind.values())
    missed = 0 if duration_s is not None else requests - done
    return {"url": url, "requests": done, "planned": requests if duration_s is None else None,
            "duration_s": duration_s, "concurrency": concurrency, "texts_per_request": texts_per_request,
            "seconds": round(seconds, 2), "requests_per_s": round(done / seconds, 1) if seconds else 0.0,
            "by_kind": by_kind, "latency_p50_ms": percentile(0.50), "latency_p95_ms": percentile(0.95),
            "latency_p99_ms": percentile(0.99), "statuses": statuses, "server_errors": server_errors,
            "unexpected": unexpected, "errors": unexpected + missed, "first_failures": first_failures,
            "server_rss": rss.summary()}


def graceful_shutdown(url: str, server: subprocess.Popen, requests: int = 32, texts_per_request: int = 16,
                      signal_after_s: float = 0.2, timeout_s: float = 120.0) -> dict:
    """Send ``requests`` requests at once, SIGTERM the server ``signal_after_s`` later (they are in flight by
    then), and report how each ended and how the server exited. A graceful server answers every one with 200
    and exits (uvicorn re-raises the SIGTERM after its graceful shutdown: exit status -15, i.e. 143 in a shell);
    ``answered_after_signal`` shows that requests were still running when the signal came."""
    import httpx

    if not is_loopback(url):
        raise ValueError(f"{url}: not a loopback address")
    texts = [DEFAULT_TEXTS[k % len(DEFAULT_TEXTS)] for k in range(texts_per_request)]
    clients = [httpx.Client(base_url=url, timeout=timeout_s) for _ in range(requests)]
    for client in clients:  # connected before the burst: the burst is requests, not connection attempts
        client.get("/health").raise_for_status()
    barrier = threading.Barrier(requests + 1)
    outcomes: list[tuple[str, float]] = []
    lock = threading.Lock()

    def send(client) -> None:
        barrier.wait()
        try:
            response = client.post("/predict", json={"texts": texts})
            ok = response.status_code == 200 and len(response.json()["predictions"]) == texts_per_request
            outcome = str(response.status_code) if ok else f"{response.status_code} (wrong answer)"
        except Exception as error:  # noqa: BLE001 - a dropped request is the finding
            outcome = type(error).__name__
        with lock:
            outcomes.append((outcome, time.monotonic()))

    threads = [threading.Thread(target=send, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    barrier.wait()
    time.sleep(signal_after_s)
    signalled = time.monotonic()
    server.send_signal(signal.SIGTERM)
    for thread in threads:
        thread.join()
    try:
        code = server.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        server.kill()
        code = "did not exit"
    exited = time.monotonic()
    for client in clients:
        client.close()
    statuses: dict[str, int] = {}
    for outcome, _ in outcomes:
        statuses[outcome] = statuses.get(outcome, 0) + 1
    return {"in_flight": requests, "texts_per_request": texts_per_request, "statuses": statuses,
            "completed_200": statuses.get("200", 0), "answered_after_signal": sum(t > signalled for _, t in outcomes),
            "exit_code": code, "exit_seconds_after_signal": round(exited - signalled, 2)}


def start_server(path: str, port: int, extra: list[str], log: Path) -> subprocess.Popen:
    """``python -m tuneforge serve PATH --port PORT ...`` in its own process, once /health answers."""
    import httpx

    with log.open("w") as stream:
        server = subprocess.Popen([sys.executable, "-m", "tuneforge", "serve", path, "--port", str(port), *extra],
                                  stdout=stream, stderr=subprocess.STDOUT,
                                  env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    deadline = time.monotonic() + 180
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the server did not answer in 180 s: {log.read_text()[-2000:]}")
        time.sleep(0.25)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description="bounded load test of tuneforge serve on this machine")
    parser.add_argument("url", nargs="?", help="a running server, e.g. http://127.0.0.1:8000 (or use --serve)")
    parser.add_argument("--serve", metavar="RUN_OR_EXPORT_DIR",
                        help="start `tuneforge serve` on this folder, load it, then check its graceful shutdown")
    parser.add_argument("--serve-args", default="", help="more serve options with --serve, e.g. '--threads 1'")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--duration", type=float, help="send requests for this many seconds instead of --requests")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--bad-fraction", type=float, default=0.0, help="share of malformed requests (4xx expected)")
    parser.add_argument("--oversized-fraction", type=float, default=0.0,
                        help="share of requests with a body over the server's limit (413 expected)")
    parser.add_argument("--server-pid", type=int, help="sample this process's RSS (default: the --serve server)")
    parser.add_argument("--deadline", type=float, default=120.0, help="stop after this many seconds")
    args = parser.parse_args()
    if (args.url is None) == (args.serve is None):
        parser.error("give a server URL or --serve RUN_OR_EXPORT_DIR")
    server = None
    if args.serve:
        port = free_port()
        args.url = f"http://127.0.0.1:{port}"
        server = start_server(args.serve, port, args.serve_args.split(), Path(f"/tmp/serve-load-{port}.log"))
    try:
        result = run_load(args.url, args.requests, args.concurrency, texts_per_request=args.texts_per_request,
                          deadline_s=max(args.deadline, (args.duration or 0) + 10), duration_s=args.duration,
                          bad_fraction=args.bad_fraction, oversized_fraction=args.oversized_fraction,
                          server_pid=args.server_pid or (server.pid if server else None))
        if server is not None:
            result["graceful_shutdown"] = graceful_shutdown(args.url, server)
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait()
    print(json.dumps(result, indent=2))
    shutdown = result.get("graceful_shutdown")
    clean = result["errors"] == 0 and result["server_errors"] == 0 and (
        shutdown is None or (shutdown["completed_200"] == shutdown["in_flight"]
                             and shutdown["exit_code"] in (0, -signal.SIGTERM)))
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
