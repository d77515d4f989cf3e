"""``tuneforge serve``: a small HTTP server over a classification run folder (PyTorch) or its export folder
(ONNX Runtime, TorchScript, safetensors), on FastAPI and uvicorn. Runs and exports of other tasks (language
models included) are refused with "not supported yet" when loaded (:func:`runtime.unsupported_task`).

- ``POST /predict`` with ``{"texts": [...]}`` (plus ``"text_pairs": [...]`` for sentence-pair runs) returns
  one prediction per text: the label, its probability and the probability of every label.
- ``GET /health`` says what is served, the limits, and how many requests and batches it has run.
- ``GET /openapi.json`` describes both as an OpenAPI schema with the server's limits (:mod:`serve_api`).

Request batching: one worker runs the model; while it runs, new requests queue, and the next forward
pass takes every queued request at once (up to ``max_batch`` texts). A lone request waits for nothing;
under load, batches grow by themselves.

Every bad request (not JSON, wrong shape, empty list, too many texts, a text over the length limit, a
body too large) is answered with a 4xx and ``{"error": "<one line>"}``; the server never crashes on input.
"""


import asyncio
import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneforge.base.errors import UserError
from tuneforge.apps.export.runtime import load_classifier
from tuneforge.apps.export.serve_api import health_operation, predict_operation

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
MAX_TEXTS = 64          # texts per request
MAX_TEXT_CHARS = 5000   # characters per text (the model reads at most max_length tokens of it anyway)
MAX_BATCH = 64          # texts per forward pass, across requests


@dataclass
class Limits:
    max_texts: int = MAX_TEXTS
    max_text_chars: int = MAX_TEXT_CHARS
    max_batch: int = MAX_BATCH

    @property
    def max_body_bytes(self) -> int:
        # Room for every text at the limit, twice (pairs), at up to 6 bytes per character once JSON-escaped.
        return 2 * self.max_texts * (6 * self.max_text_chars + 16) + 4096


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_request(body: bytes, is_pair_task: bool, limits: Limits) -> tuple[list[str], list[str] | None]:
    """The texts (and pair texts) of a /predict body, or BadRequest naming what is wrong."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(400, f"the body is not valid JSON ({error}); send {{\"texts\": [\"...\"]}}") from None
    except RecursionError:
        raise BadRequest(400, "the body's JSON is nested too deeply; send {\"texts\": [\"...\"]}") from None
    if not isinstance(payload, dict):
        raise BadRequest(422, f"the body must be a JSON object like {{\"texts\": [\"...\"]}}, not {type(payload).__name__}")
    unknown = sorted(set(payload) - {"texts", "text_pairs"})
    if unknown:
        raise BadRequest(422, f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are 'texts' "
                              "(and 'text_pairs' for sentence-pair models)")
    texts = _text_list(payload, "texts", limits)
    pairs = None
    if is_pair_task:
        if "text_pairs" not in payload:
            raise BadRequest(422, "this model classifies sentence pairs: send 'text_pairs' too, one per text")
        pairs = _text_list(payload, "text_pairs", limits)
        if len(pairs) != len(texts):
            raise BadRequest(422, f"'texts' has {len(texts)} items but 'text_pairs' has {len(pairs)}; send one pair "
                                  "text per text")
    elif "text_pairs" in payload:
        raise BadRequest(422, "this model classifies single texts: drop 'text_pairs'")
    return texts, pairs


def _text_list(payload: dict, field: str, limits: Limits) -> list[str]:
    if field not in payload:
        raise BadRequest(422, f"missing field '{field}'; send {{\"{field}\": [\"...\"]}}")
    values = payload[field]
    if not isinstance(values, list):
        raise BadRequest(422, f"'{field}' must be a list of strings, not {type(values).__name__}")
    if not values:
        raise BadRequest(422, f"'{field}' is empty; send 1 to {limits.max_texts} texts")
    if len(values) > limits.max_texts:
        raise BadRequest(413, f"'{field}' has {len(values)} texts; at most {limits.max_texts} per request, split them")
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise BadRequest(422, f"{field}[{i}] must be a string, not {type(value).__name__}")
        if not value.strip():
            raise BadRequest(422, f"{field}[{i}] is empty")
        if not value.isascii() and not _is_unicode(value):
            raise BadRequest(422, f"{field}[{i}] holds an unpaired surrogate escape (\\ud800-\\udfff alone), which is "
                                  "not a character")
        if len(value) > limits.max_text_chars:
            raise BadRequest(413, f"{field}[{i}] has {len(value)} characters; the limit is {limits.max_text_chars}")
    return values


def _is_unicode(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Batcher:
    """Runs the classifier in one worker thread; requests queued while it runs share the next forward pass."""

    def __init__(self, classifier, max_batch: int) -> None:
        self.classifier = classifier
        self.max_batch = max_batch
        self.queue: asyncio.Queue | None = None
        self.executor: ThreadPoolExecutor | None = None
        self.task: asyncio.Task | None = None
        self.requests = 0
        self.batches = 0
        self.texts = 0

    async def start(self) -> None:
        # made here, not in __init__: stop() shuts it down, and an app's lifespan may run again (tests, reloads)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tuneforge-model")
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        if self.executor is not None:
            self.executor.shutdown(wait=True)

    async def probabilities(self, texts: list[str], pairs: list[str] | None) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, pairs, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        carry = None
        while True:
            first = carry if carry is not None else await self.queue.get()
            carry = None
            items, count = [first], len(first[0])
            while count < self.max_batch and not self.queue.empty():
                item = self.queue.get_nowait()
                if count + len(item[0]) > self.max_batch:
                    carry = item
                    break
                items.append(item)
                count += len(item[0])
            items = [item for item in items if not item[2].done()]  # the client went away
            if not items:
                continue
            texts = [t for item in items for t in item[0]]
            pairs = [p for item in items for p in item[1]] if items[0][1] is not None else None
            try:
                probabilities = await loop.run_in_executor(self.executor, self.classifier.probabilities, texts, pairs,
                                                           self.max_batch)
            except Exception as error:  # a model failure answers these requests with 500, the server goes on
                for item in items:
                    if not item[2].done():
                        item[2].set_exception(error)
                continue
            self.batches += 1
            self.requests += len(items)
            self.texts += len(texts)
            start = 0
            for item in items:
                if not item[2].done():
                    item[2].set_result(probabilities[start:start + len(item[0])])
                start += len(item[0])


def create_app(classifier, limits: Limits | None = None):
    """The FastAPI application serving ``classifier`` (a :class:`tuneforge.apps.export.TextClassifier`)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    limits = limits or Limits()
    batcher = Batcher(classifier, limits.max_batch)
    names = classifier.label_names

    @asynccontextmanager
    async def lifespan(app):
        await batcher.start()
        yield
        await batcher.stop()

    # /openapi.json describes the API (serve_api.py): clients and fuzzers read the limits and shapes from it
    app = FastAPI(title="tuneforge serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(404)
    async def not_found(request: Request, exc) -> JSONResponse:
        return error(404, f"no such endpoint {request.url.path}; use POST /predict or GET /health")

    @app.exception_handler(405)
    async def wrong_method(request: Request, exc) -> JSONResponse:
        response = error(405, f"{request.method} is not allowed on {request.url.path}; use POST /predict or GET "
                              "/health")
        response.headers.update(getattr(exc, "headers", None) or {})  # `Allow: GET` (RFC 9110), as Starlette sets it
        return response

    @app.get("/health", openapi_extra=health_operation())
    async def health() -> dict:
        return {"status": "ok", "model": classifier.description, "source": str(classifier.source), "labels": names,
                "pair_task": classifier.is_pair_task, "max_texts": limits.max_texts,
                "max_text_chars": limits.max_text_chars, "max_batch": limits.max_batch,
                "requests": batcher.requests, "batches": batcher.batches, "texts": batcher.texts}

    @app.post("/predict", openapi_extra=predict_operation(limits.max_texts, limits.max_text_chars, list(names),
                                                          classifier.is_pair_task))
    async def predict(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            return error(413, f"the body has {declared} bytes; the limit is {limits.max_body_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.max_body_bytes:
                return error(413, f"the body is over {limits.max_body_bytes} bytes")
        try:
            texts, pairs = parse_request(bytes(body), classifier.is_pair_task, limits)
        except BadRequest as bad:
            return error(bad.status, bad.message)
        try:
            probabilities = await batcher.probabilities(texts, pairs)
        except Exception as failure:
            return error(500, f"the model failed on this request: {type(failure).__name__}: {failure}")
        predictions = []
        for row in probabilities:
            best = int(row.argmax())
            predictions.append({"label": names[best], "confidence": round(float(row[best]), 6),
                                "probabilities": {name: round(float(p), 6) for name, p in zip(names, row)}})
        return JSONResponse({"predictions": predictions})

    return app


def check_port(host: str, port: int) -> None:
    """Fail with one line (not a uvicorn traceback) when the address cannot be bound."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UserError(f"serve: cannot resolve --host {host} ({error})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            raise UserError(f"serve: cannot listen on {host}:{port} ({error.strerror}); is another server using it? "
                            "choose another --port") from None


def serve(path: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, limits: Limits | None = None,
          threads: int | None = None, log=lambda message: print(message, file=sys.stderr, flush=True)) -> None:
    """Load ``path`` (run or export folder) and serve it until interrupted."""
    import uvicorn

    if not 1 <= port <= 65535:
        raise UserError(f"serve: --port must be 1-65535, got {port}")
    limits = limits or Limits()
    for name in ("max_texts", "max_text_chars", "max_batch"):
        if getattr(limits, name) < 1:
            raise UserError(f"serve: --{name.replace('_', '-')} must be at least 1")
    if threads is not None and threads < 1:
        raise UserError(f"serve: --threads must be at least 1, got {threads}")
    classifier = load_classifier(path, threads=threads)
    check_port(host, port)
    app = create_app(classifier, limits)
    if host not in ("127.0.0.1", "localhost", "::1"):
        log(f"warning: listening on {host}, reachable from other machines; the server has no authentication")
    log(f"serving {classifier.description} ({len(classifier.label_names)} labels) from {path}")
    log(f"listening on http://{host}:{port}  (POST /predict, GET /health; Ctrl+C stops)")
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
