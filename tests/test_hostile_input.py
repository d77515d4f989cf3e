"""Hostile input, property-based (hypothesis): recipes, data files, predict inputs and HTTP bodies that a user
(or a client) may send by mistake or on purpose. Every case ends with one clear error (``error: ...``, exit 1,
never a traceback) or succeeds; an HTTP body gets a 2xx or a 4xx with ``{"error": ...}``, never a 5xx. serve's
API is also fuzzed from its OpenAPI schema with schemathesis.

Everything runs in-process (the CLI's ``main`` called with argv), so hundreds of cases take seconds. The number of
cases of each test is its ``max_examples`` (docs/reliability.md adds them up)."""

from __future__ import annotations

import json
import math
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from conftest import run_cli, synthetic_rows, write_jsonl
from tiny_runs import shared_tiny_run
from tuneforge.base.recipe import Recipe

# Each property's number of cases; the totals are in docs/reliability.md.
RECIPE_CASES, RECIPE_TEXT_CASES, DATA_CASES, PREDICT_TEXT_CASES, PREDICT_FILE_CASES, HTTP_CASES = (
    150, 60, 120, 25, 20, 200)
SCHEMA_CASES = 60  # per API operation and generation mode
FUZZ = settings(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def assert_one_clear_error(code: int, err: str) -> None:
    """A refused input: exit 1, and what is printed is ``error: ...`` lines, no traceback."""
    assert "Traceback" not in err, err
    assert code == 1, (code, err)
    message = err[err.index("error: "):] if "error: " in err else ""
    assert message, err
    assert all(line.strip() for line in message.strip().splitlines()), err


def assert_ok_or_one_clear_error(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    if code != 0:
        assert_one_clear_error(code, err)


# ----------------------------------------------------------------------------- values a user may write


HUGE = [0, -1, -(10 ** 9), 2 ** 31, 2 ** 63, 10 ** 30, -(10 ** 30), 10 ** 400]
hostile_scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(HUGE), st.integers(),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e-308, 5e-324]),
    st.text(max_size=20), st.sampled_from(["", " ", "nan", "-inf", "1e999", "0x10", "yes", "~", "null", "ä€😀"]),
)
hostile_values = st.one_of(hostile_scalars, st.lists(hostile_scalars, max_size=3),
                           st.dictionaries(st.text(string.ascii_lowercase, min_size=1, max_size=8), hostile_scalars,
                                           max_size=3))


def schema_keys(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every dotted key of the recipe schema (sections and their keys)."""
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + (name,))
        pending, seen = [field.annotation], []
        while pending:
            annotation = pending.pop()
            seen.append(annotation)
            pending += list(getattr(annotation, "__args__", ()))
        for annotation in seen:
            if isinstance(annotation, type) and issubclass(annotation, BaseModel) and len(prefix) < 2:
                keys += schema_keys(annotation, prefix + (name,))
                break
    return keys


RECIPE_KEYS = schema_keys(Recipe) + [("method", key) for key in ("r", "alpha", "dropout", "merge", "target_modules",
                                                                  "unfreeze_top_layers", "num_virtual_tokens")]


@pytest.fixture(scope="module", autouse=True)
def offline_hub():
    """A fuzzed ``model:`` may read as a hub id: answer "not found" at once, not after the hub client's retries."""
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def job(tmp_path_factory, tiny_model) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("hostile")
    write_jsonl(folder / "train.jsonl", synthetic_rows(60, seed=1))
    base = {"name": "hostile", "model": str(tiny_model), "data": {"train": "train.jsonl", "max_length": 32},
            "method": {"name": "full"}, "train": {"epochs": 1, "batch_size": 8}}
    code, _, err = run_cli("validate", str(write_recipe(folder / "base.yaml", base)))
    assert code == 0, err  # the unchanged recipe is valid: every refusal below is the hostile value's
    return {"folder": folder, "base": base}


def write_recipe(path: Path, raw: Any) -> Path:
    path.write_text(yaml.safe_dump(raw, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def set_key(raw: dict, keys: tuple[str, ...], value: Any) -> dict:
    raw = json.loads(json.dumps(raw))
    node = raw
    for part in keys[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[keys[-1]] = value
    return raw


# ----------------------------------------------------------------------------- recipes


@settings(FUZZ, max_examples=RECIPE_CASES)
@given(edits=st.lists(st.tuples(st.one_of(st.sampled_from(RECIPE_KEYS),
                                          st.tuples(st.sampled_from(["", "train", "data", "method", "export"]),
                                                    st.text(string.ascii_letters + "_", min_size=1, max_size=12))
                                          .map(lambda pair: tuple(part for part in pair if part))),
                                hostile_values), min_size=1, max_size=3),
       overrides=st.lists(st.tuples(st.sampled_from([".".join(keys) for keys in RECIPE_KEYS] + ["", ".", "a..b"]),
                                    st.sampled_from(["=", "", "=="]), st.text(max_size=12)).map("".join), max_size=2))
def test_recipe_with_hostile_keys_and_values(job, edits, overrides):
    raw = job["base"]
    for keys, value in edits:
        raw = set_key(raw, keys, value)
    path = write_recipe(job["folder"] / "fuzzed.yaml", raw)
    code, _, err = run_cli("validate", str(path), *[f"--set={item}" for item in overrides])
    assert_ok_or_one_clear_error(code, err)


@settings(FUZZ, max_examples=RECIPE_TEXT_CASES)
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda text: text.encode("utf-8")),
                         st.sampled_from([b"", b"\xef\xbb\xbfname: x\n", b"- a\n- b\n", b"a: &a [1]\nb: *a\n",
                                          b"name: [unclosed\n", b"\xff\xfe\x00n", "name: ä".encode("latin-1"),
                                          b"model: !!python/object:os.system ls\n", b"{a: 1, a: 2}\n", b"[" * 5000,
                                          b"a:\n" + b"".join(b" " * (i + 1) + b"b:\n" for i in range(2000))])))
def test_recipe_file_of_any_bytes(job, content):
    path = job["folder"] / "bytes.yaml"
    path.write_bytes(content)
    code, _, err = run_cli("validate", str(path))
    assert_ok_or_one_clear_error(code, err)


# ----------------------------------------------------------------------------- data files

cells = st.one_of(
    st.text(max_size=12), st.sampled_from(["", " ", "NaN", "nan", "None", "null", "NA", "#N/A", "\n", "a\nb", '"',
                                           "a,b", "a\tb", "\r\n", "\x00", "\ufeff", "😀", "é", "\ud800"]),
    st.integers(-(10 ** 20), 10 ** 20), st.floats(allow_nan=True, allow_infinity=True), st.none(),
    st.just("x" * 100_000),  # a huge cell
)
columns = st.lists(st.sampled_from(["text", "label", "text", "label", "Text", "", "extra", "text_pair", "label "]),
                   min_size=0, max_size=4)


@st.composite
def data_files(draw) -> tuple[str, bytes]:
    """(extension, file bytes): tables with duplicate, missing or odd columns, ragged rows, odd cells and
    encodings, and files that are empty or not tables at all."""
    extension = draw(st.sampled_from([".csv", ".tsv", ".jsonl", ".json"]))
    header = draw(columns)
    if draw(st.integers(0, 3)):  # mostly the right columns (plus odd ones), so that the rows themselves are read
        header = ["text", "label", *header]
    ragged = draw(st.booleans())
    rows = draw(st.lists(st.lists(cells, min_size=0 if ragged else len(header), max_size=len(header) + 2 * ragged),
                         min_size=0, max_size=8))
    if draw(st.booleans()):  # among ordinary rows: the file is valid unless the odd rows make it not
        rows = [[row["text"], row["label"], *[""] * (len(header) - 2)] for row in synthetic_rows(24, seed=3)] + rows
    if extension in (".csv", ".tsv"):
        separator = "," if extension == ".csv" else "\t"
        quote = draw(st.booleans())

        def line(values: list) -> str:
            text = ["" if v is None else str(v) for v in values]
            if quote:
                text = ['"' + t.replace('"', '""') + '"' for t in text]
            return separator.join(text)
        body = "\n".join([line(header)] + [line(row) for row in rows])
    elif extension == ".jsonl":
        body = "\n".join(json.dumps(dict(zip(header, row)) if draw(st.integers(0, 9)) else row, allow_nan=True)
                         for row in rows)
    else:
        body = json.dumps([dict(zip(header, row)) for row in rows] if draw(st.booleans()) else
                          {"rows": rows}, allow_nan=True)
    encoding = draw(st.sampled_from(["utf-8"] * 6 + ["utf-8-sig", "utf-8-sig", "utf-16", "latin-1", "cp1252", "mixed"]))
    if encoding == "mixed":  # half the file in one encoding, half in another
        half = len(body) // 2
        content = body[:half].encode("utf-8", "replace") + body[half:].encode("latin-1", "replace")
    else:
        content = body.encode(encoding, "replace")
    if draw(st.booleans()) and draw(st.booleans()):
        content = draw(st.sampled_from([b"", b"\n", b"\xef\xbb\xbf", b"\x00" * 10, b"\x89PNG\r\n\x1a\n", b"[" * 5000,
                                        b'{"text": "\\ud800", "label": "a"}\n']))
    return extension, content


@settings(FUZZ, max_examples=DATA_CASES)
@given(data=data_files())
def test_data_file_of_any_shape(job, data):
    extension, content = data
    path = job["folder"] / f"fuzzed{extension}"
    path.write_bytes(content)
    recipe = write_recipe(job["folder"] / "data.yaml", set_key(job["base"], ("data", "train"), path.name))
    code, _, err = run_cli("validate", str(recipe))
    assert_ok_or_one_clear_error(code, err)


# ----------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_model) -> Path:
    return shared_tiny_run(tmp_path_factory, tiny_model)


predict_texts = st.one_of(st.text(max_size=50), st.sampled_from(["", " ", "\n\t", "\x00", "😀" * 3000, "a" * 100_000,
                                                                  "[CLS] [SEP] [PAD]", "\ud800"]))


@settings(FUZZ, max_examples=PREDICT_TEXT_CASES)
@given(text=predict_texts, top=st.sampled_from([5, 1, 0, -3, 10 ** 9]))
def test_predict_any_text(tiny_run, text, top):
    code, out, err = run_cli("predict", str(tiny_run), "--text", text, "--top", str(top))
    assert_ok_or_one_clear_error(code, err)


@settings(FUZZ, max_examples=PREDICT_FILE_CASES)
@given(data=data_files())
def test_predict_any_input_file(tiny_run, tmp_path_factory, data):
    extension, content = data
    folder = tmp_path_factory.mktemp("predict")
    path = folder / f"input{extension}"
    path.write_bytes(content)
    code, _, err = run_cli("predict", str(tiny_run), "--input", str(path), "--output", str(folder / "out.csv"))
    assert_ok_or_one_clear_error(code, err)


# ----------------------------------------------------------------------------- HTTP bodies


def nested(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4))


json_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=20)), nested, max_leaves=12)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries({"texts": json_values}).map(lambda value: json.dumps(value).encode()),
    st.fixed_dictionaries({"texts": st.lists(st.text(max_size=400), max_size=20)},
                          optional={"text_pairs": json_values}).map(lambda value: json.dumps(value).encode()),
    st.sampled_from([b"{\"texts\": [\"a\"] ", b"{\"texts\": [NaN]}", b"{\"texts\": [\"\\ud800\"]}",
                     b"\xef\xbb\xbf{\"texts\": [\"good\"]}", b"{\"texts\": [1e999]}", b"[" * 10_000]),
)


@pytest.fixture(scope="module")
def client(tiny_run):
    from fastapi.testclient import TestClient

    from tuneforge.apps.export.runtime import load_classifier
    from tuneforge.apps.export.serve import Limits, create_app

    app = create_app(load_classifier(tiny_run, threads=1), Limits(max_texts=16, max_text_chars=300))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@settings(FUZZ, max_examples=HTTP_CASES)
@given(body=bodies,
       content_type=st.sampled_from(["application/json", "text/plain", "", "application/x-www-form-urlencoded"]))
def test_http_body_gets_a_2xx_or_a_4xx(client, body, content_type):
    response = client.post("/predict", content=body, headers={"content-type": content_type} if content_type else {})
    assert response.status_code < 500, (body[:200], response.text[:300])
    if response.status_code >= 400:
        assert set(response.json()) == {"error"} and response.json()["error"].strip()
    else:
        predictions = response.json()["predictions"]
        assert all(math.isclose(sum(p["probabilities"].values()), 1, abs_tol=1e-4) for p in predictions)


# ----------------------------------------------------------------------------- the API from its OpenAPI schema

try:
    import schemathesis
except ImportError:  # the dev extra installs it; without it only this last test skips
    schemathesis = None


if schemathesis is None:
    def test_serve_api_fuzzed_from_its_openapi_schema():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
else:
    @pytest.fixture(scope="module")
    def api_schema(tiny_run):
        from tuneforge.apps.export.runtime import load_classifier
        from tuneforge.apps.export.serve import Limits, create_app

        app = create_app(load_classifier(tiny_run, threads=1), Limits(max_texts=16, max_text_chars=300))
        # serve answers a request its schema refuses with 400 (not JSON), 422 (wrong shape) or 413 (over a limit)
        config = schemathesis.Config.from_dict(
            {"checks": {"negative_data_rejection": {"expected-statuses": [400, 413, 422]}}})
        return schemathesis.openapi.from_asgi("/openapi.json", app, config=config)

    api = schemathesis.pytest.from_fixture("api_schema")

    @api.parametrize()
    @settings(FUZZ, max_examples=SCHEMA_CASES)
    def test_serve_api_fuzzed_from_its_openapi_schema(case):
        """Valid and invalid requests generated from /openapi.json: never a 5xx, every status and body as documented."""
        case.call_and_validate()
