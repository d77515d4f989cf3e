"""Reading tables from CSV, TSV, JSON, JSONL and Parquet, with errors that name file and line."""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from tuneforge.base.errors import UserError

SUPPORTED_EXTENSIONS = {".csv": "CSV", ".tsv": "TSV", ".json": "JSON", ".jsonl": "JSONL", ".parquet": "Parquet"}

# Column holding each row's position in the source file, as a person would find it in an editor:
# the line number for CSV/TSV/JSONL (header counted), the 1-based record number otherwise.
SOURCE_ROW = "__source_row__"


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a data file into a DataFrame with a ``__source_row__`` column; the format comes from the extension."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: data file not found (check the path; relative paths in a recipe are "
                        "resolved against the recipe's folder)")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; point the recipe at a data file inside it")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise UserError(f"{path}: unsupported file type '{suffix or '(none)'}'; use one of "
                        f"{', '.join(SUPPORTED_EXTENSIONS)} (the format is taken from the extension)")
    try:
        if suffix == ".jsonl":
            frame = _read_jsonl(path)
        elif suffix == ".json":
            frame = _read_json(path)
            frame[SOURCE_ROW] = range(1, len(frame) + 1)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
            frame[SOURCE_ROW] = range(1, len(frame) + 1)
        else:
            frame = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
            frame[SOURCE_ROW] = range(2, len(frame) + 2)
    except UserError:
        raise
    except UnicodeDecodeError as exc:  # Latin-1, Windows-1252, UTF-16 or a mix: name it, say the fix
        with path.open("rb") as stream:
            utf16 = stream.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
        what = "it starts with a UTF-16 byte-order mark" if utf16 else f"byte {hex(exc.object[exc.start])} is not UTF-8"
        raise UserError(f"{path}: is not UTF-8 text ({what}); save the file as UTF-8") from None
    except (pd.errors.ParserError, ValueError, OSError) as exc:
        raise UserError(f"{path}: cannot be read as {SUPPORTED_EXTENSIONS[suffix]}: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise UserError(f"{path}: cannot be read as {SUPPORTED_EXTENSIONS[suffix]}: it is nested too deeply (lists "
                        "or objects inside each other thousands of times); each example must be one flat "
                        "object") from None
    if len(frame) == 0:
        raise UserError(f"{path}: has no rows")
    return frame


def _read_jsonl(path: Path) -> pd.DataFrame:
    records: list[dict] = []
    with path.open(encoding="utf-8-sig") as handle:  # -sig: a byte-order mark (Windows editors) is dropped
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{line_number}:{exc.colno}: not valid JSON ({exc.msg}); "
                                "each line of a .jsonl file must be one JSON object") from None
            if not isinstance(record, dict):
                raise UserError(f"{path}:{line_number}: expected a JSON object per line, got {type(record).__name__}")
            if "\\u" in line:  # a JSON escape may decode to half of a surrogate pair, which no tokenizer reads
                refuse_lone_surrogates(record.values(), f"{path}:{line_number}")
            record[SOURCE_ROW] = line_number
            records.append(record)
    return pd.DataFrame.from_records(records)


def _read_json(path: Path) -> pd.DataFrame:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON ({exc.msg})") from None
    if isinstance(data, dict):
        # {"data": [...]} (as the HF datasets JSON loader accepts) or a dict of columns.
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(data) == 1 and lists and all(isinstance(item, dict) for item in lists[0]):
            data = lists[0]
        else:
            for column, values in data.items():
                refuse_lone_surrogates(values if isinstance(values, list) else [values], f"{path}: column {column!r}")
            return pd.DataFrame(data)
    if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
        raise UserError(f"{path}: expected a JSON list of objects (one per example); for one object per line use .jsonl")
    for number, item in enumerate(data, start=1):
        refuse_lone_surrogates(item.values(), f"{path}: object {number}")
    return pd.DataFrame.from_records(data)


def refuse_lone_surrogates(values: Iterable[object], where: str) -> None:
    """UserError when a text among ``values`` holds half of a UTF-16 surrogate pair (a JSON escape such as
    ``\\ud800`` alone): it is not Unicode text, and no tokenizer can read it."""
    for value in values:
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as error:
                raise UserError(f"{where}: text {value[:40]!r} holds an unpaired surrogate "
                                f"({value[error.start]!r}), which is not a character; fix or remove it") from None


def write_table(frame: pd.DataFrame, path: str | Path) -> None:
    """Write a DataFrame in the format its extension names (CSV, TSV, JSON, JSONL or Parquet)."""
    path = Path(path)
    suffix = path.suffix.lower()
    frame = frame.drop(columns=[SOURCE_ROW], errors="ignore")
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".json":
        frame.to_json(path, orient="records", force_ascii=False, indent=1)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        raise UserError(f"{path}: unsupported output type '{suffix}'; use one of {', '.join(SUPPORTED_EXTENSIONS)}")
