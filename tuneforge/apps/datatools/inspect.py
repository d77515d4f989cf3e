"""``tuneforge data inspect``: what is in a labelled file, before any training.

Row count, label distribution and imbalance ratio, text length in tokens of the model that will read it
(and how many rows exceed ``max_length``), empty rows, exact duplicates, near-duplicates (the same text
after :func:`normalise`), the same text with conflicting labels, and, with a second file, leakage: rows
of the second (test) file whose text is also in the first (train) file.

Everything is vectorised with pandas and the model's fast tokenizer, so 100k rows take seconds
(``bench/data_inspect.py`` measures it).
"""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tuneforge.base.errors import UserError
from tuneforge.base.models import resolve_model
from tuneforge.base.quiet import quiet_transformers
from tuneforge.base.tables import SOURCE_ROW, read_table
from tuneforge.apps.report import agg_pyplot, cards, esc, figure_png, img, page, section, table

EXAMPLES = 10  # example groups kept per finding in the report


def normalise(texts: pd.Series) -> pd.Series:
    """Case-, accent-, punctuation- and whitespace-insensitive key: what "near-duplicate" means here."""
    folded = texts.astype(str).map(lambda t: unicodedata.normalize("NFKD", t).encode("ascii", "ignore").decode()
                                   if not t.isascii() else t)
    return (folded.str.lower()
            .str.replace(r"[^\w\s]|_", " ", regex=True)
            .str.replace(r"\s+", " ", regex=True)
            .str.strip())


def read_labelled(path: str | Path, text_column: str, label_column: str | None, text_pair_column: str | None = None,
                  label_required: bool = True) -> pd.DataFrame:
    """Read a file and check its columns; keep ``__source_row__``. Labels are strings ('' = missing)."""
    frame = read_table(path)
    columns = [c for c in frame.columns if c != SOURCE_ROW]
    for flag, column, required in (("--text-column", text_column, True), ("--label-column", label_column, label_required),
                                   ("--text-pair-column", text_pair_column, True)):
        if column and column not in frame.columns and required:
            raise UserError(f"{path}: no column '{column}' ({flag}); the file has columns: "
                            f"{', '.join(map(str, columns))}. Pass {flag} with one of them")
    if label_column and label_column in frame.columns:
        values = frame[label_column]
        if values.map(lambda v: isinstance(v, (list, dict))).any():
            raise UserError(f"{path}: column '{label_column}' holds lists (a multi-label file); tuneforge data "
                            "handles one label per row; point --label-column at a single-label column")
    return frame


def label_strings(values: pd.Series) -> pd.Series:
    """Labels as stripped strings, '' for a missing one; a float that is a whole number reads as an int (3.0 -> '3')."""
    def one(value: Any) -> str:
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return ""
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        return str(value).strip()
    return values.map(one)


def row_keys(frame: pd.DataFrame, text_column: str, text_pair_column: str | None) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(raw key, normalised key, empty mask) per row; a pair's key joins both texts."""
    text = frame[text_column].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    empty = text.str.strip() == ""
    raw, norm = text, normalise(text)
    if text_pair_column:
        pair = frame[text_pair_column].map(lambda v: "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
        empty |= pair.str.strip() == ""
        raw = raw + "\x1f" + pair
        norm = norm + " || " + normalise(pair)
    return raw, norm, empty


def _group_examples(frame: pd.DataFrame, key: pd.Series, mask: pd.Series, text: pd.Series, labels: pd.Series,
                    limit: int = EXAMPLES) -> list[dict[str, Any]]:
    """The largest groups among rows where ``mask`` holds: rows, texts and labels of each."""
    if not mask.any():
        return []
    sub = pd.DataFrame({"key": key[mask], "row": frame.loc[mask, SOURCE_ROW].astype(int), "text": text[mask],
                        "label": labels[mask]})
    sizes = sub.groupby("key", sort=False)["row"].size().sort_values(ascending=False, kind="stable")
    out = []
    for group_key in sizes.index[:limit]:
        members = sub[sub["key"] == group_key]
        out.append({"text": members["text"].iloc[0], "texts": sorted(set(members["text"]))[:5],
                    "rows": members["row"].tolist()[:20], "labels": members["label"].tolist()[:20],
                    "size": int(len(members))})
    return out


def inspect_frame(frame: pd.DataFrame, text_column: str, label_column: str, text_pair_column: str | None = None,
                  tokenizer=None, max_length: int = 128) -> dict[str, Any]:
    """The report of one table (see the module docstring)."""
    n = len(frame)
    labels = label_strings(frame[label_column]) if label_column in frame.columns else pd.Series([""] * n, index=frame.index)
    raw, norm, empty = row_keys(frame, text_column, text_pair_column)
    shown_text = frame[text_column].astype(str)
    report: dict[str, Any] = {"rows": int(n), "text_column": text_column, "label_column": label_column,
                              "text_pair_column": text_pair_column}

    # labels
    missing = labels == ""
    counts = labels[~missing].value_counts()
    report["labels"] = {
        "count": int(len(counts)),
        "distribution": {str(k): int(v) for k, v in counts.items()},
        "imbalance_ratio": float(counts.max() / counts.min()) if len(counts) else None,
        "missing": int(missing.sum()),
        "missing_rows": frame.loc[missing, SOURCE_ROW].astype(int).tolist()[:20],
    }

    # empty
    report["empty"] = {"count": int(empty.sum()), "rows": frame.loc[empty, SOURCE_ROW].astype(int).tolist()[:20]}

    # lengths in tokens
    if tokenizer is not None:
        texts = frame[text_column].astype(str).tolist()
        pairs = frame[text_pair_column].astype(str).tolist() if text_pair_column else None
        lengths = token_lengths(tokenizer, texts, pairs)
        over = lengths > max_length
        percentiles = np.percentile(lengths, [50, 90, 95, 99]) if n else [0, 0, 0, 0]
        edges = np.unique(np.linspace(0, max(int(lengths.max()), 1), 31).round().astype(int)) if n else np.array([0, 1])
        histogram, edges = np.histogram(lengths, bins=edges)
        longest = np.argsort(-lengths, kind="stable")[:5]
        report["lengths"] = {
            "unit": "tokens", "tokenizer": getattr(tokenizer, "name_or_path", "?"), "max_length": int(max_length),
            "min": int(lengths.min()), "mean": round(float(lengths.mean()), 2), "median": float(percentiles[0]),
            "p90": float(percentiles[1]), "p95": float(percentiles[2]), "p99": float(percentiles[3]),
            "max": int(lengths.max()),
            "over_max_length": int(over.sum()), "over_max_length_share": round(float(over.mean()), 6),
            "over_max_length_rows": frame.loc[over, SOURCE_ROW].astype(int).tolist()[:20],
            "longest_rows": [int(frame[SOURCE_ROW].iloc[i]) for i in longest],
            "histogram": {"edges": edges.tolist(), "counts": histogram.tolist()},
        }

    # duplicates (empty rows left out: they are reported above)
    valid = ~empty
    exact_dup = raw.duplicated(keep="first") & valid
    norm_dup = norm.duplicated(keep="first") & valid
    raw_groups = raw[valid].value_counts()
    in_exact_group = raw.isin(raw_groups.index[raw_groups > 1]) & valid
    report["exact_duplicates"] = {
        "rows": int(exact_dup.sum()), "groups": int((raw_groups > 1).sum()),
        "examples": _group_examples(frame, raw, in_exact_group, shown_text, labels),
    }
    distinct_raw_per_norm = pd.DataFrame({"norm": norm[valid], "raw": raw[valid]}).groupby("norm")["raw"].nunique()
    near_keys = distinct_raw_per_norm.index[distinct_raw_per_norm > 1]
    in_near_group = norm.isin(near_keys) & valid
    report["near_duplicates"] = {
        "rows": int(norm_dup.sum() - exact_dup.sum()), "groups": int(len(near_keys)),
        "definition": "same text after lower-casing, removing accents and punctuation and collapsing spaces, "
                      "but not exactly the same",
        "examples": _group_examples(frame, norm, in_near_group, shown_text, labels),
    }

    # conflicting labels: the same (normalised) text under two or more labels
    labelled = valid & ~missing
    label_sets = pd.DataFrame({"norm": norm[labelled], "label": labels[labelled]}).groupby("norm")["label"].nunique()
    conflict_keys = label_sets.index[label_sets > 1]
    in_conflict = norm.isin(conflict_keys) & labelled
    report["conflicting_labels"] = {
        "groups": int(len(conflict_keys)), "rows": int(in_conflict.sum()),
        "examples": _group_examples(frame, norm, in_conflict, shown_text, labels),
    }
    return report


def token_lengths(tokenizer, texts: list[str], pairs: list[str] | None = None, chunk: int = 4096) -> np.ndarray:
    """Tokens per example, special tokens included and nothing truncated."""
    out: list[int] = []
    with quiet_transformers():  # "sequence longer than the model maximum" is what we measure
        for start in range(0, len(texts), chunk):
            encoded = tokenizer(texts[start:start + chunk], pairs[start:start + chunk] if pairs else None,
                                add_special_tokens=True, truncation=False, padding=False,
                                return_attention_mask=False, return_token_type_ids=False)
            out += [len(ids) for ids in encoded["input_ids"]]
    return np.asarray(out, dtype=np.int64)


def leakage(train: pd.DataFrame, test: pd.DataFrame, text_column: str, label_column: str | None,
            text_pair_column: str | None = None) -> dict[str, Any]:
    """Rows of ``test`` whose text (exactly, or normalised) is also in ``train``."""
    train_raw, train_norm, train_empty = row_keys(train, text_column, text_pair_column)
    test_raw, test_norm, test_empty = row_keys(test, text_column, text_pair_column)
    exact = test_raw.isin(set(train_raw[~train_empty])) & ~test_empty
    near = test_norm.isin(set(train_norm[~train_empty])) & ~test_empty
    result: dict[str, Any] = {"test_rows": int(len(test)), "exact": int(exact.sum()), "normalised": int(near.sum()),
                              "share": round(float(near.mean()), 6) if len(test) else 0.0}
    first_row = pd.Series(train[SOURCE_ROW].astype(int).values, index=train_norm.values)
    first_row = first_row[~first_row.index.duplicated()]
    if label_column and label_column in train.columns and label_column in test.columns:
        train_labels = pd.Series(label_strings(train[label_column]).values, index=train_norm.values)
        train_labels = train_labels[~train_labels.index.duplicated()]
        test_labels = label_strings(test[label_column])
        other = test_norm[near].map(train_labels)
        result["different_label"] = int((other != test_labels[near]).sum())
    examples = []
    for i in np.flatnonzero(near.to_numpy())[:EXAMPLES]:
        key = test_norm.iloc[i]
        examples.append({"test_row": int(test[SOURCE_ROW].iloc[i]), "train_row": int(first_row[key]),
                         "text": str(test[text_column].iloc[i]), "exact": bool(exact.iloc[i])})
    result["examples"] = examples
    return result


def load_tokenizer(model: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(resolve_model(model))
    except (OSError, ValueError) as exc:
        raise UserError(f"model '{model}': cannot load its tokenizer ({str(exc).splitlines()[0]}); "
                        "give --model an alias (see `tuneforge models`) or a local model folder") from None


def inspect_file(path: str | Path, text_column: str = "text", label_column: str = "label",
                 text_pair_column: str | None = None, against: str | Path | None = None,
                 model: str | None = "minilm", max_length: int = 128) -> dict[str, Any]:
    """Read ``path`` (and ``against``) and return the whole report as plain JSON-able data."""
    frame = read_labelled(path, text_column, label_column, text_pair_column)
    tokenizer = load_tokenizer(model) if model else None
    report = {"file": str(path), "model": model,
              **inspect_frame(frame, text_column, label_column, text_pair_column, tokenizer, max_length)}
    if against is not None:
        other = read_labelled(against, text_column, label_column, text_pair_column, label_required=False)
        report["against"] = {"file": str(against),
                             **leakage(frame, other, text_column, label_column, text_pair_column)}
    return report


# ----------------------------------------------------------------------------- output


def summary_lines(report: dict[str, Any]) -> list[str]:
    """The printed summary: one finding per line."""
    lines = [f"{report['file']}: {report['rows']:,} rows"]
    labels = report["labels"]
    if labels["count"]:
        top = sorted(labels["distribution"].items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{k} {v}" for k, v in top[:6]) + (f", ... ({len(top) - 6} more)" if len(top) > 6 else "")
        lines.append(f"  labels: {labels['count']} ({shown}); imbalance ratio (largest/smallest) "
                     f"{labels['imbalance_ratio']:.2f}")
    if labels["missing"]:
        lines.append(f"  rows without a label: {labels['missing']} (rows {_rows(labels['missing_rows'])})")
    lengths = report.get("lengths")
    if lengths:
        lines.append(f"  length in tokens ({lengths['tokenizer'] if report.get('model') is None else report['model']}): "
                     f"min {lengths['min']}, median {lengths['median']:.0f}, mean {lengths['mean']:.1f}, "
                     f"p95 {lengths['p95']:.0f}, p99 {lengths['p99']:.0f}, max {lengths['max']}; "
                     f"{lengths['over_max_length']} row(s) ({100 * lengths['over_max_length_share']:.2f}%) exceed "
                     f"max_length {lengths['max_length']}")
    empty = report["empty"]
    lines.append(f"  empty or whitespace-only texts: {empty['count']}"
                 + (f" (rows {_rows(empty['rows'])})" if empty["count"] else ""))
    exact = report["exact_duplicates"]
    lines.append(f"  exact duplicates: {exact['rows']} extra row(s) in {exact['groups']} group(s)")
    near = report["near_duplicates"]
    lines.append(f"  near-duplicates (same normalised text, not identical): {near['rows']} extra row(s) in "
                 f"{near['groups']} group(s)")
    conflicts = report["conflicting_labels"]
    lines.append(f"  same text, conflicting labels: {conflicts['groups']} text(s), {conflicts['rows']} row(s)")
    for example in conflicts["examples"][:3]:
        pairs = ", ".join(f"row {r}: {l}" for r, l in zip(example["rows"][:4], example["labels"][:4]))
        lines.append(f"    {_clip(example['text'])!r}: {pairs}")
    against = report.get("against")
    if against:
        line = (f"  leakage: {against['normalised']} of {against['test_rows']:,} rows of {against['file']} "
                f"({100 * against['share']:.2f}%) also appear in {report['file']} ({against['exact']} exactly)")
        if "different_label" in against:
            line += f"; {against['different_label']} of them with a different label"
        lines.append(line)
        for example in against["examples"][:3]:
            lines.append(f"    test row {example['test_row']} = train row {example['train_row']}: {_clip(example['text'])!r}")
    return lines


def _rows(rows: list[int], limit: int = 10) -> str:
    return ", ".join(map(str, rows[:limit])) + (" ..." if len(rows) > limit else "")


def _clip(text: str, width: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


# ----------------------------------------------------------------------------- data_report.html
# (built from tuneforge.apps.report's building blocks, so both reports look alike)


def _bar_png(names: list[str], values: list[int], title: str, xlabel: str) -> bytes:
    plt = agg_pyplot()
    height = min(max(2.5, 0.22 * len(names) + 1.2), 24)
    figure, axes = plt.subplots(figsize=(9, height))
    axes.barh(range(len(names)), values, color="#3c6ea8")
    axes.set_yticks(range(len(names)), labels=names, fontsize=8 if len(names) > 20 else 10)
    axes.margins(y=0.01)
    axes.invert_yaxis()
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.grid(axis="x", alpha=0.3)
    figure.tight_layout()
    return figure_png(figure)


def _histogram_png(lengths: dict[str, Any]) -> bytes:
    plt = agg_pyplot()
    edges, counts = lengths["histogram"]["edges"], lengths["histogram"]["counts"]
    figure, axes = plt.subplots(figsize=(9, 3.2))
    axes.bar(edges[:-1], counts, width=[b - a for a, b in zip(edges[:-1], edges[1:])], align="edge",
             color="#3c6ea8", edgecolor="white")
    axes.axvline(lengths["max_length"], color="#d62728", linestyle="--", label=f"max_length {lengths['max_length']}")
    axes.set_xlabel("tokens per example")
    axes.set_ylabel("rows")
    axes.set_title("Text length in tokens")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure_png(figure)


def _examples_table(examples: list[dict[str, Any]]) -> str:
    if not examples:
        return "<p>None.</p>"
    return table(["text", "rows", "labels", "size"],
                 [[" | ".join(e.get("texts") or [e["text"]]), ", ".join(map(str, e["rows"][:10])),
                   ", ".join(map(str, e["labels"][:10])), e["size"]] for e in examples], numeric={3})


def render_data_report(report: dict[str, Any]) -> str:
    """The HTML of a ``tuneforge data inspect`` report (``data_report.html``)."""
    sections = [section("summary", "Summary", "<pre>" + esc("\n".join(summary_lines(report))) + "</pre>")]
    labels = report["labels"]
    if labels["count"]:
        distribution = sorted(labels["distribution"].items(), key=lambda kv: -kv[1])
        body = cards([("labels", labels["count"]), ("imbalance ratio", round(labels["imbalance_ratio"], 2)),
                      ("rows without label", labels["missing"])])
        body += img(_bar_png([k for k, _ in distribution], [v for _, v in distribution], "Rows per label", "rows"),
                    "label distribution")
        sections.append(section("labels", "Label distribution", body))
    lengths = report.get("lengths")
    if lengths:
        body = cards([("median tokens", lengths["median"]), ("p95", lengths["p95"]), ("max", lengths["max"]),
                      (f"rows over max_length {lengths['max_length']}", lengths["over_max_length"])])
        body += img(_histogram_png(lengths), "length histogram")
        if lengths["over_max_length_rows"]:
            body += f"<p class=\"muted\">rows over max_length: {esc(', '.join(map(str, lengths['over_max_length_rows'])))}</p>"
        sections.append(section("lengths", "Text length", body))
    empty = report["empty"]
    sections.append(section("empty", "Empty rows", f"<p>{empty['count']} empty or whitespace-only text(s)"
                            + (f": rows {esc(', '.join(map(str, empty['rows'])))}" if empty["count"] else "") + "</p>"))
    exact, near = report["exact_duplicates"], report["near_duplicates"]
    sections.append(section("duplicates", "Duplicates",
                            f"<p>{exact['rows']} exact duplicate row(s) in {exact['groups']} group(s).</p>"
                            + _examples_table(exact["examples"])
                            + f"<h3>Near-duplicates</h3><p>{near['rows']} row(s) in {near['groups']} group(s): "
                              f"{esc(near['definition'])}.</p>" + _examples_table(near["examples"])))
    conflicts = report["conflicting_labels"]
    sections.append(section("conflicts", "Conflicting labels",
                            f"<p>{conflicts['groups']} text(s) appear with more than one label ({conflicts['rows']} "
                            "rows).</p>" + _examples_table(conflicts["examples"])))
    against = report.get("against")
    if against:
        body = cards([("test rows", against["test_rows"]), ("also in train", against["normalised"]),
                      ("exactly", against["exact"]), ("with another label", against.get("different_label", "–"))])
        body += table(["test row", "train row", "text", "exact"],
                      [[e["test_row"], e["train_row"], e["text"], e["exact"]] for e in against["examples"]],
                      numeric={0, 1})
        sections.append(section("leakage", f"Leakage: {Path(against['file']).name} rows found in "
                                           f"{Path(report['file']).name}", body))
    return page(f"tuneforge data report: {Path(report['file']).name}", f"{report['rows']:,} rows · {report['file']}",
                sections)


def write_report(report: dict[str, Any], folder: str | Path) -> tuple[Path, Path]:
    """Write data_report.json and data_report.html into ``folder`` (never over existing files)."""
    folder = Path(folder)
    paths = (folder / "data_report.json", folder / "data_report.html")
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise UserError(f"{', '.join(existing)}: already exist(s); tuneforge never overwrites a report, "
                        "choose another --output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create the output folder ({exc.strerror})") from None
    paths[0].write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    paths[1].write_text(render_data_report(report), encoding="utf-8")
    return paths
