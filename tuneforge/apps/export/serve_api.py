"""The OpenAPI description of ``tuneforge serve`` (``GET /openapi.json``): what ``POST /predict`` accepts and
what each endpoint answers, with the server's own limits in it.

``/predict`` reads its body itself (one clear 4xx line for every kind of bad body, see
:func:`tuneforge.apps.export.serve.parse_request`), so FastAPI cannot infer the schema; it is written here
instead, and clients and API fuzzers (schemathesis, in tests/test_hostile_input.py) read it from the server.
"""

from __future__ import annotations

from typing import Any

ERROR_BODY = {"type": "object", "required": ["error"], "additionalProperties": False,
              "properties": {"error": {"type": "string", "description": "what is wrong, in one line"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_BODY}}}


def predict_operation(max_texts: int, max_text_chars: int, labels: list[str], pair_task: bool) -> dict[str, Any]:
    """``openapi_extra`` of ``POST /predict``: its request body and every response it gives."""
    texts = {"type": "array", "minItems": 1, "maxItems": max_texts,
             "items": {"type": "string", "minLength": 1, "maxLength": max_text_chars, "pattern": r"\S"}}
    properties: dict[str, Any] = {"texts": {**texts, "description": "the texts to classify"}}
    required = ["texts"]
    if pair_task:
        properties["text_pairs"] = {**texts, "description": "the second text of each pair, one per text"}
        required.append("text_pairs")
    prediction = {"type": "object", "required": ["label", "confidence", "probabilities"],
                  "properties": {"label": {"type": "string", "enum": labels},
                                 "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                                 "probabilities": {"type": "object",
                                                   "additionalProperties": {"type": "number", "minimum": 0,
                                                                            "maximum": 1}}}}
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {
            "type": "object", "required": required, "additionalProperties": False, "properties": properties}}}},
        "responses": {
            "200": {"description": "one prediction per text, in order",
                    "content": {"application/json": {"schema": {
                        "type": "object", "required": ["predictions"],
                        "properties": {"predictions": {"type": "array", "items": prediction}}}}}},
            "400": _error("the body is not JSON"),
            "413": _error("too many texts, a text too long, or a body too large"),
            "422": _error("JSON of the wrong shape: not an object, unknown or missing fields, empty texts"),
            "500": _error("the model failed on this request (a bug; the server goes on)"),
        },
    }


def health_operation() -> dict[str, Any]:
    """``openapi_extra`` of ``GET /health``."""
    return {"responses": {"200": {"description": "what is served, the limits and the counters",
                                  "content": {"application/json": {"schema": {
                                      "type": "object", "required": ["status", "labels"],
                                      "properties": {"status": {"const": "ok"},
                                                     "labels": {"type": "array", "items": {"type": "string"}}}}}}}}}
