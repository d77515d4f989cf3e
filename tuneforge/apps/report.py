"""Self-contained HTML reports: ``report.html`` of a run folder, and the HTML building blocks they share.

One file each, with the CSS inline and every image a ``data:`` URI, so it opens from disk, from an
e-mail attachment or an artefact store, with no network. The run report reads only the run folder's
files (config.yaml, run.json, labels.json, metrics.jsonl, eval/<name>/...), so it can be rebuilt at any
time with ``tuneforge report RUN_DIR``, also for a failed or interrupted run. ``data_report.html`` of
``tuneforge data inspect`` is rendered by :mod:`tuneforge.apps.datatools.inspect` with the building
blocks below (:func:`page`, :func:`section`, :func:`table`, ...).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from tuneforge.apps.explain import highlight_rows
from tuneforge.base.errors import UserError

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;margin:0;color:#1d2330;background:#f4f6f9}
main{max-width:1120px;margin:0 auto;padding:24px 28px 60px}
header{background:#1f3a5f;color:#fff;padding:22px 28px}
header h1{margin:0 0 6px;font-size:24px} header p{margin:0;opacity:.85}
section{background:#fff;border:1px solid #dfe3ea;border-radius:8px;padding:16px 20px;margin:18px 0}
h2{margin:0 0 12px;font-size:19px;color:#1f3a5f}
table{border-collapse:collapse;font-size:13.5px;margin:4px 0 8px}
th,td{border-bottom:1px solid #e4e7ed;padding:5px 10px;text-align:left;vertical-align:top}
th{background:#f0f3f7;font-weight:600} td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f7f8fa;border:1px solid #e4e7ed;padding:10px;overflow:auto;white-space:pre-wrap;font-size:12.5px;max-height:420px}
img{max-width:100%;height:auto;display:block;margin:6px 0}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#f0f5fb;border:1px solid #d6e2f0;border-radius:6px;padding:10px 14px;min-width:120px}
.card b{display:block;font-size:20px;color:#1f3a5f} .card span{font-size:12px;color:#556}
.warn{color:#9a3b00} .muted{color:#667;font-size:13px} .bad{background:#fff3ef}
.tok{padding:1px 2px;border-radius:3px;line-height:1.9}
"""


# ----------------------------------------------------------------------------- building blocks


def esc(value: Any) -> str:
    """``str(value)`` escaped for HTML text and attribute values."""
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A cell value as a person reads it: '–' for None, yes/no, ``digits`` decimals, thousands separators."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]], numeric: set[int] | None = None,
          row_class: list[str] | None = None, raw: set[int] | None = None) -> str:
    """An HTML table; columns in ``numeric`` are right-aligned, ``row_class[r]`` is row r's CSS class; cells of the
    columns in ``raw`` are HTML the caller has already escaped."""
    numeric, raw = numeric or set(), raw or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_class[r]}"' if row_class and row_class[r] else ""
        cells = "".join(f"<td>{v}</td>" if i in raw else f'<td class="num">{esc(fmt(v))}</td>' if i in numeric
                        else f"<td>{esc(fmt(v))}</td>" for i, v in enumerate(row))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def cards(items: list[tuple[str, Any]]) -> str:
    """A row of headline figures, one card per (name, value)."""
    return '<div class="cards">' + "".join(
        f'<div class="card"><b>{esc(fmt(value))}</b><span>{esc(name)}</span></div>' for name, value in items) + "</div>"


def image_uri(png: bytes) -> str:
    """A PNG as a ``data:`` URI, so the page needs no file next to it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str) -> str:
    """An ``<img>`` element embedding ``png``."""
    return f'<img alt="{esc(alt)}" src="{image_uri(png)}">'


def figure_png(figure) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def agg_pyplot():
    """``matplotlib.pyplot`` on the Agg backend (no display needed); imported on first use, as it is slow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def section(section_id: str, title: str, body: str) -> str:
    """A titled ``<section>`` of a report page."""
    return f'<section id="{esc(section_id)}"><h2>{esc(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: list[str]) -> str:
    """A whole HTML document: the CSS inline, a header with ``title`` and ``subtitle``, then ``sections``."""
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><main>{''.join(sections)}</main>"
            "</body></html>\n")


# ----------------------------------------------------------------------------- the run report


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    steps, epochs = [], []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            (epochs if any(k.startswith("validation_") for k in record) else steps).append(record)
    return steps, epochs


def curves_png(steps: list[dict], epochs: list[dict]) -> bytes | None:
    """Training loss and learning rate per step, validation metrics per epoch."""
    if not steps and not epochs:
        return None
    plt = agg_pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    loss_points = [(r["step"], r["loss"]) for r in steps if "loss" in r]
    if loss_points:
        axes[0].plot(*zip(*loss_points), color="#1f77b4", marker="." if len(loss_points) < 30 else None)
    val_loss = [(r["step"], r["validation_loss"]) for r in epochs if r.get("validation_loss") is not None]
    if val_loss:
        axes[0].plot(*zip(*val_loss), color="#d62728", marker="o", label="validation loss (per epoch)")
        axes[0].legend(fontsize=8)
    axes[0].set_title("training loss")
    axes[0].set_xlabel("optimizer step")
    lr_points = sorted({(r["step"], r["lr"]) for r in steps + epochs if "lr" in r and "step" in r})
    if lr_points:
        axes[1].plot(*zip(*lr_points), color="#2ca02c", marker="." if len(lr_points) < 30 else None)
    axes[1].set_title("learning rate")
    axes[1].set_xlabel("optimizer step")
    axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    plotted = False
    # classifiers' metrics, or a language model's perplexity (epoch 0: the untrained model)
    for key, color in (("validation_accuracy", "#1f77b4"), ("validation_f1_macro", "#ff7f0e"),
                       ("validation_roc_auc", "#9467bd"), ("validation_perplexity", "#8c564b")):
        points = [(r["epoch"], r[key]) for r in epochs if r.get(key) is not None]
        if points:
            axes[2].plot(*zip(*points), marker="o", color=color, label=key.replace("validation_", ""))
            plotted = True
    axes[2].set_title("validation metrics per epoch")
    from matplotlib.ticker import MaxNLocator

    axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[2].set_xlabel("epoch")
    if plotted:
        axes[2].legend(fontsize=8)
    for axis in axes:
        axis.grid(alpha=0.3)
    figure.tight_layout()
    return figure_png(figure)


def _eval_folder(run_dir: Path) -> Path | None:
    if (run_dir / "eval" / "test" / "metrics.json").is_file():
        return run_dir / "eval" / "test"
    found = sorted(p.parent for p in (run_dir / "eval").glob("*/metrics.json")) if (run_dir / "eval").is_dir() else []
    return found[0] if found else None


def learning_html(learning: dict[str, Any] | None, thresholds: dict[str, Any] | None) -> str:
    """The learning guard's verdict when the run did not learn (with its likely fixes), and the multi-label
    labels whose tuned threshold was degenerate (kept at 0.5), with their validation support."""
    html = ""
    if learning and not learning.get("learned", True):
        fixes = "".join(f"<li>{esc(fix)}</li>" for fix in learning.get("likely_fixes") or [])
        html += f'<p class="warn">{esc(learning.get("line"))}</p>' + (f"<p>likely fixes:</p><ul>{fixes}</ul>"
                                                                      if fixes else "")
    flagged = (thresholds or {}).get("flagged") or []
    if flagged:
        html += ('<p class="warn">' + f"{len(flagged)} label(s) keep threshold 0.5: their best validation threshold "
                 "was no better than predicting them always or never.</p>"
                 + table(["label", "validation support", "rows", "best F1", "F1 of always"],
                         [[f.get("label"), f.get("support"), f.get("rows"), f.get("best_f1"), f.get("always_f1")]
                          for f in flagged], numeric={1, 2, 3, 4}))
    return html


def render_run_report(run_dir: str | Path, top_errors: int = 20) -> str:
    """The HTML of a run folder's report."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: not a folder; give a run folder written by `tuneforge train`")
    status = _read_json(run_dir / "run.json")
    if status is None and not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: not a run folder (no run.json or config.yaml)")
    status = status or {}
    labels = _read_json(run_dir / "labels.json") or []
    steps, epochs = _read_metrics(run_dir / "metrics.jsonl")
    eval_dir = _eval_folder(run_dir)
    eval_metrics = _read_json(eval_dir / "metrics.json") if eval_dir else None
    name = status.get("name", run_dir.name)
    subtitle = (f"{status.get('status', 'unknown status')} · model {status.get('model', '?')} · method "
                f"{status.get('method', '?')} · started {status.get('started', '?')} · {run_dir}")
    sections: list[str] = []

    # summary cards
    headline = [("status", status.get("status", "?"))]
    if eval_metrics:
        headline += [(f"{eval_dir.name} accuracy", eval_metrics.get("accuracy")),
                     (f"{eval_dir.name} f1_macro", eval_metrics.get("f1_macro"))]
    if status.get("validation"):
        headline.append(("validation f1_macro (best epoch)", status["validation"].get("f1_macro")))
    minutes = status.get("minutes")
    headline += [("best epoch", status.get("best_epoch")),
                 ("minutes", f"{minutes:.1f}" if isinstance(minutes, (int, float)) else minutes)]
    body = cards(headline)
    if status.get("error"):
        body += f'<p class="warn">error: {esc(status["error"])}</p>'
    body += learning_html(status.get("learning"), _read_json(run_dir / "thresholds.json"))
    sections.append(section("summary", "Summary", body))

    # recipe
    recipe_text = (run_dir / "config.yaml").read_text(encoding="utf-8") if (run_dir / "config.yaml").is_file() \
        else "(no config.yaml)"
    sections.append(section("recipe", "Recipe", f"<p class=\"muted\">The resolved recipe (every default filled "
                                                f"in), as saved in config.yaml.</p><pre>{esc(recipe_text)}</pre>"))

    # data
    rows = status.get("rows") or {}
    body = table(["split", "rows"], [[k, v] for k, v in rows.items()], numeric={1}) if rows else ""
    data_info = status.get("data") or {}
    counts = data_info.get("label_counts") or {}
    if counts:
        splits = list(counts)
        names = labels or sorted({n for c in counts.values() for n in c})
        body += "<h3>Labels per split</h3>" + table(["label", *splits],
                                                    [[n, *[counts[s].get(n, 0) for s in splits]] for n in names],
                                                    numeric=set(range(1, len(splits) + 1)))
    elif labels:
        body += f"<p>{len(labels)} labels: {esc(', '.join(labels[:50]))}{' …' if len(labels) > 50 else ''}</p>"
    for note in data_info.get("notes") or []:
        body += f'<p class="muted">note: {esc(note)}</p>'
    sections.append(section("data", "Data", body or "<p>No data summary in run.json.</p>"))

    # curves
    png = curves_png(steps, epochs)
    body = img(png, "training curves") if png else "<p>No metrics.jsonl lines yet.</p>"
    if epochs:
        keys = [k for k in ("validation_loss", "validation_accuracy", "validation_f1_macro", "validation_roc_auc")
                if any(k in r for r in epochs)]
        body += table(["epoch", "step", "lr", *[k.replace("validation_", "val ") for k in keys], "train s", "samples/s"],
                      [[r.get("epoch"), r.get("step"), f"{r.get('lr', 0):.2e}", *[r.get(k) for k in keys],
                        f"{r.get('train_seconds', 0.0):.1f}", f"{r.get('samples_per_s', 0.0):.1f}"] for r in epochs],
                      numeric=set(range(0, 6 + len(keys))))
    sections.append(section("curves", "Training curves", body))

    # final metrics
    metric_keys = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro", "roc_auc", "loss",
                   "n_examples")
    final_rows = []
    if status.get("validation"):
        final_rows.append([f"validation (best epoch {status.get('best_epoch', '?')})",
                           *[status["validation"].get(k) for k in metric_keys]])
    if eval_metrics:
        final_rows.append([eval_dir.name, *[eval_metrics.get(k) for k in metric_keys]])
    body = table(["split", *metric_keys], final_rows, numeric=set(range(1, len(metric_keys) + 1))) if final_rows \
        else "<p>No final metrics (the run has not finished).</p>"
    sections.append(section("metrics", "Final metrics", body))

    forgetting = forgetting_section(run_dir)  # continual runs: the previous run's test before and after
    if forgetting is not None:
        sections.append(forgetting)
    calibration = calibration_section(run_dir)  # train.calibrate: the reliability diagram, ECE before and after
    if calibration is not None:
        sections.append(calibration)

    # per class
    per_class = (eval_metrics or {}).get("per_class") or {}
    if per_class:
        ordered = sorted(per_class.items(), key=lambda kv: kv[1]["f1"])
        body = (f"<p class=\"muted\">On {esc(eval_dir.name)}, worst F1 first.</p>"
                + table(["label", "precision", "recall", "f1", "support"],
                        [[k, v["precision"], v["recall"], v["f1"], v["support"]] for k, v in ordered],
                        numeric={1, 2, 3, 4}, row_class=["bad" if v["f1"] < 0.5 else "" for _, v in ordered]))
    else:
        body = "<p>No per-class metrics (no evaluation folder).</p>"
    sections.append(section("per-class", "Per-class metrics", body))

    # confusion matrix
    matrix = eval_dir / "confusion_matrix.png" if eval_dir else None
    body = img(matrix.read_bytes(), "confusion matrix") if matrix and matrix.is_file() else \
        "<p>No confusion matrix (no evaluation folder).</p>"
    sections.append(section("confusion", "Confusion matrix", body))

    # most confident errors
    errors_path = eval_dir / "errors.csv" if eval_dir else None
    if errors_path and errors_path.is_file():
        errors = pd.read_csv(errors_path, keep_default_na=False)
        shown = errors.head(top_errors)
        columns = [c for c in ("row", "text", "text_pair", "gold", "predicted", "confidence") if c in shown.columns]
        values = shown[columns].values.tolist()
        marked, caption = error_highlights(run_dir, shown)  # only these rows are explained: the report stays fast
        if marked is not None:
            for row, html_text in zip(values, marked):
                row[columns.index("text")] = html_text
        body = (f"<p class=\"muted\">{len(errors)} error(s) on {esc(eval_dir.name)}; the {len(shown)} the model was "
                "surest of (a high confidence on a wrong answer often means a wrong gold label).</p>"
                + (f'<p class="muted">{esc(caption)}</p>' if caption else "")
                + table(columns, values, numeric={columns.index("confidence")} if "confidence" in columns else set(),
                        raw={columns.index("text")} if marked is not None else set()))
    else:
        body = "<p>No errors.csv (no evaluation folder).</p>"
    sections.append(section("errors", "Most confident errors", body))

    # timings
    timing_rows = [["total", f"{status.get('minutes', '?')} min"], ["started", status.get("started")],
                   ["finished", status.get("finished")]]
    for record in epochs:
        timing_rows.append([f"epoch {record.get('epoch')} training",
                            f"{record.get('train_seconds', 0):.1f} s ({record.get('samples_per_s', 0):.1f} samples/s)"])
    for key in ("precision", "trainable_params", "total_params", "stopped_early"):
        if key in status:
            timing_rows.append([key.replace("_", " "), status[key]])
    sections.append(section("timings", "Timings", table(["what", "value"], timing_rows)))
    return page(f"tuneforge run: {name}", subtitle, sections)


def error_highlights(run_dir: Path, shown: pd.DataFrame) -> tuple[list[str] | None, str]:
    """The confident errors' texts as HTML with each token coloured by its attribution toward the predicted label
    (:func:`tuneforge.apps.explain.highlight_rows`), or (None, why not); never fails the report."""
    if shown.empty or not {"text", "predicted"} <= set(shown.columns):
        return None, ""
    try:
        pairs = shown["text_pair"].astype(str).tolist() if "text_pair" in shown.columns else None
        return highlight_rows(run_dir, shown["text"].astype(str).tolist(), pairs,
                              shown["predicted"].astype(str).tolist())
    except Exception as error:  # noqa: BLE001 - the highlighting is an aid; the report is written without it
        return None, f"tokens not highlighted ({type(error).__name__}: {error})"


def forgetting_section(run_dir: Path) -> str | None:
    """The ``forgetting.json`` of a continual run (``tuneforge train --from``) as a section, or None."""
    record = _read_json(run_dir / "forgetting.json")
    if not isinstance(record, dict):
        return None
    rows = []
    for key in ("accuracy", "f1_macro"):
        drop = (record.get("drop") or {}).get(key)
        rows.append([key, (record.get("before") or {}).get(key), (record.get("after") or {}).get(key),
                     f"{100 * drop:+.2f}" if isinstance(drop, (int, float)) else None,
                     (record.get("new_test") or {}).get(key)])
    body = (f"<p>Continued from <code>{esc(record.get('from'))}</code> with strategy <b>{esc(record.get('strategy'))}"
            f"</b>; the previous run's test file ({esc(record.get('rows'))} rows, <code>{esc(record.get('previous_test'))}"
            "</code>) evaluated before (by the previous run) and after (by this one, in eval/previous-test/).</p>"
            + table(["metric", "previous test before", "previous test after", "drop (points)", "new test"], rows,
                    numeric={1, 2, 3, 4})
            + f'<p class="muted">{esc(record.get("note", ""))}</p>')
    return section("forgetting", "Forgetting", body)


def reliability_png(record: dict[str, Any], split: str) -> bytes:
    """Two reliability diagrams of ``split`` (before and after temperature scaling): per confidence bin, the
    accuracy as a bar against the diagonal of perfect calibration, and the bin's row count."""
    plt = agg_pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.4), sharey=True)
    for axis, when, title in ((axes[0], "before", "before (plain softmax)"),
                              (axes[1], "after", f"after (T = {record['temperature']:.3f})")):
        bins = record[split][f"bins_{when}"]
        width = bins[0]["upper"] - bins[0]["lower"]
        filled = [b for b in bins if b["count"]]
        centres = [b["lower"] + width / 2 for b in filled]
        axis.bar([b["lower"] for b in filled], [b["accuracy"] for b in filled], width=width, align="edge",
                 color="#1f77b4", edgecolor="#1f3a5f", alpha=0.85, label="accuracy")
        axis.vlines(centres, [b["accuracy"] for b in filled], [b["mean_confidence"] for b in filled],
                    color="#d62728", linewidth=2)  # the gap that ECE weighs by the bin's share of rows
        axis.scatter(centres, [b["mean_confidence"] for b in filled], marker="_", s=180, linewidths=2.5,
                     color="#d62728", zorder=3, label="mean confidence (red line: the gap)")
        axis.plot([0, 1], [0, 1], color="#444", linestyle="--", linewidth=1, label="perfect calibration")
        for b in filled:
            axis.text(b["lower"] + width / 2, 0.02, str(b["count"]), ha="center", fontsize=7, rotation=90,
                      color="white" if b["accuracy"] > 0.1 else "#333")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence (highest probability)")
        axis.set_title(f"{split} {title}: ECE {record[split][f'ece_{when}']:.4f}")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy in bin (row count at the bottom)")
    axes[0].legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    return figure_png(figure)


def calibration_section(run_dir: Path) -> str | None:
    """``calibration.json`` (``train.calibrate``) as a section: the temperature, ECE and NLL before and after per
    split, and the reliability diagram of the test split (of validation when there is no test split)."""
    record = _read_json(run_dir / "calibration.json")
    if not isinstance(record, dict) or "temperature" not in record:
        return None
    rows = [[split, record[split].get("n_examples"), record[split].get("ece_before"), record[split].get("ece_after"),
             record[split].get("nll_before"), record[split].get("nll_after")]
            for split in ("validation", "test") if isinstance(record.get(split), dict)]
    fitted = record.get("fitted", True)
    body = (f"<p>Temperature scaling fitted on the validation split: confidences are softmax(logits / T) with "
            f"<b>T = {record['temperature']:.4f}</b>; predict, eval and serve report them. The predicted labels do "
            f"not change. ECE: {esc(record.get('ece_bins', '?'))} equal-width confidence bins.</p>"
            if fitted else f'<p class="warn">Not fitted: {esc(record.get("reason"))}. Confidences are the plain '
                           "softmax.</p>")
    if fitted and record.get("reason"):
        body += f'<p class="warn">{esc(record["reason"])}</p>'
    body += table(["split", "rows", "ECE before", "ECE after", "NLL before", "NLL after"], rows,
                  numeric={1, 2, 3, 4, 5})
    shown = "test" if isinstance(record.get("test"), dict) else "validation"
    if isinstance(record.get(shown), dict) and record[shown].get("bins_before"):
        body += img(reliability_png(record, shown), f"reliability diagram ({shown})")
        if shown == "validation":
            body += ('<p class="muted">No test split: the diagram shows validation, where T was fitted, so the '
                     '"after" side is optimistic.</p>')
    return section("calibration", "Calibration", body)


def write_run_report(run_dir: str | Path) -> Path:
    """Write (or rewrite: it is derived from the run's other files) ``RUN_DIR/report.html``."""
    path = Path(run_dir) / "report.html"
    path.write_text(render_run_report(run_dir), encoding="utf-8")
    return path
