"""A bounded load test of a running ``tuneforge serve``: N requests from C concurrent clients, each with
keep-alive, against a loopback address; reports requests/s, latency percentiles and every non-200.

    tuneforge serve RUN_OR_EXPORT_DIR --port 8000 &
    python bench/serve_load.py http://127.0.0.1:8000 --requests 2000 --concurrency 8

Only loopback URLs are accepted: this is a test of your own server on this machine. Needs httpx
(``pip install -e '.[dev]'``). tests/test_serve.py runs it in CI.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import sys
import threading
import time
from urllib.parse import urlsplit

DEFAULT_TEXTS = ["the film was great", "an awful, boring plot", "quite a lovely story and a fine actor",
                 "the show was really terrible", "nice", "it was a sad and ugly film, very poor"]


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError):
        return False


def run_load(url: str, requests: int = 2000, concurrency: int = 8, texts: list[str] | None = None,
             texts_per_request: int = 1, deadline_s: float = 120.0) -> dict:
    """Send ``requests`` POST /predict from ``concurrency`` threads; stop early at ``deadline_s``."""
    import httpx

    if not is_loopback(url):
        raise ValueError(f"{url}: not a loopback address; this load test only targets a server on this machine")
    texts = texts or DEFAULT_TEXTS
    counter = iter(range(requests))
    lock = threading.Lock()
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    failures: list[str] = []
    stop_at = time.monotonic() + deadline_s

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            while time.monotonic() < stop_at:
                with lock:
                    index = next(counter, None)
                if index is None:
                    return
                body = {"texts": [texts[(index + k) % len(texts)] for k in range(texts_per_request)]}
                start = time.perf_counter()
                try:
                    response = client.post("/predict", json=body)
                    status = str(response.status_code)
                    ok = response.status_code == 200 and len(response.json()["predictions"]) == texts_per_request
                except Exception as error:  # a refused or broken connection counts as an error, not a crash
                    status, ok = type(error).__name__, False
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    statuses[status] = statuses.get(status, 0) + 1
                    if not ok and len(failures) < 5:
                        failures.append(f"request {index}: {status}")

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    latencies.sort()

    def percentile(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2) if latencies else 0.0

    done = len(latencies)
    return {"url": url, "requests": done, "planned": requests, "concurrency": concurrency,
            "texts_per_request": texts_per_request, "seconds": round(seconds, 2),
            "requests_per_s": round(done / seconds, 1) if seconds else 0.0,
            "latency_p50_ms": percentile(0.50), "latency_p95_ms": percentile(0.95), "latency_p99_ms": percentile(0.99),
            "statuses": statuses, "errors": done - statuses.get("200", 0) + (requests - done), "first_failures": failures}


def main() -> int:
    parser = argparse.ArgumentParser(description="bounded load test of tuneforge serve on this machine")
    parser.add_argument("url", help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--texts-per-request", type=int, default=1)
    parser.add_argument("--deadline", type=float, default=120.0, help="stop after this many seconds")
    args = parser.parse_args()
    result = run_load(args.url, args.requests, args.concurrency, texts_per_request=args.texts_per_request,
                      deadline_s=args.deadline)
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
