"""`tuneforge explain`: integrated-gradients token attributions (Captum) of a trained run, the JSONL and the
self-contained HTML outputs (rendered in headless Chromium without a network request), base + adapter runs, and
the highlighted tokens of report.html's confident errors. Tiny models only."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli, synthetic_rows, tiny_recipe_text, write_jsonl
from tiny_runs import shared_tiny_run

pytest.importorskip("captum", reason="Captum (the explain extra, also in dev) is not installed")

from tuneforge.apps.explain import Explainer, highlight_html  # noqa: E402


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model) -> Path:
    return shared_tiny_run(tmp_path_factory, tiny_model)


def test_attributions_are_complete_on_a_tiny_model(trained_run):
    # The tiny model is saturated (p 0.97 on every row, the logit jumps within a short stretch of the path), so the
    # integral needs more points than MiniLM's 50 (there, bench/explain_deletion.py measures it); 300 are cheap here.
    explainer = Explainer(trained_run, steps=300)
    texts = [row["text"] for row in synthetic_rows(12, seed=11)]
    explanations = [explainer.explain(text) for text in texts]
    for explanation, text in zip(explanations, texts):
        assert len(explanation.tokens) == len(explanation.attributions) == len(text.split())  # word-level vocab
        assert explanation.label == explanation.predicted
    # completeness: the attributions add up to the target logit minus the baseline's (computed by two separate
    # forward passes, not by Captum)
    errors = [e.completeness_error for e in explanations]
    assert sum(errors) / len(errors) <= 0.05, errors
    named = explainer.explain(texts[0], label="negative")
    assert named.label == "negative" and named.probability <= 1.0


def test_explain_text_prints_tokens_and_the_check(trained_run):
    code, out, err = run_cli("explain", str(trained_run), "--text", "the film was great", "--steps", "20")
    assert code == 0, err
    assert "predicted " in out and "great[" in out and "20 steps" in out and "logit difference" in out
    code, _, err = run_cli("explain", str(trained_run), "--text", "the film", "--label", "nope")
    assert code == 1 and "--label 'nope'" in err


def test_explain_file_to_jsonl(trained_run, tmp_path):
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, synthetic_rows(5, seed=12))
    out = tmp_path / "x.jsonl"
    code, stdout, err = run_cli("explain", str(trained_run), "--input", str(rows), "--output", str(out),
                                "--steps", "20")
    assert code == 0, err
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 5 and {"tokens", "attributions", "label", "logit_difference", "steps"} <= set(records[0])
    assert "wrote 5 explanations" in stdout
    code, _, err = run_cli("explain", str(trained_run), "--input", str(rows), "--output", str(out))
    assert code == 1 and "already exists" in err  # never overwritten


def test_highlighted_html_is_escaped():
    markup = highlight_html(["<script>", "a&b", "##x"], [1.0, -0.5, 0.0])
    assert "<script>" not in markup and "&lt;script&gt;" in markup and "a&amp;b" in markup
    assert "rgba(22,150,70" in markup and "rgba(210,40,40" in markup


def test_explain_works_on_a_base_plus_adapter_run(tiny_model, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", synthetic_rows(160, seed=1))
    write_jsonl(tmp_path / "test.jsonl", synthetic_rows(20, seed=2))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(tiny_model, name="adapter").replace(
        "  name: full\n", "  name: lora\n  r: 4\n  merge: false\n").replace("epochs: 6", "epochs: 2"))
    run = tmp_path / "run"
    code, _, err = run_cli("train", str(recipe), "--output", str(run))
    assert code == 0, err
    assert (run / "adapter").is_dir() and not (run / "model" / "config.json").exists()  # base + adapter
    explanation = Explainer(run, steps=300).explain("the film was great")
    assert explanation.completeness_error <= 0.05


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def page_requests(page: Path, net_log: Path) -> tuple[str, list[str]]:
    """(the DOM, the URLs the page itself asked the network for) of ``page`` in headless Chromium. The browser's
    own background requests (update checks, ...) have no page origin as initiator and are left out."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
             f"--log-net-log={net_log}", "--net-log-capture-mode=Everything", "--dump-dom"]
    dom = subprocess.run([chromium(), *flags, page.resolve().as_uri()], capture_output=True, text=True,
                         timeout=120).stdout
    log = json.loads(net_log.read_text())
    names = {value: key for key, value in log["constants"]["logEventTypes"].items()}
    requested = [event["params"]["url"] for event in log["events"]
                 if names.get(event["type"]) == "URL_REQUEST_START_JOB" and "url" in event.get("params", {})
                 and event["params"].get("initiator") != "not an origin"]
    return dom, requested


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium); the "
                                                "headless-browser check of explain's HTML is skipped")
def test_explain_html_renders_in_headless_chromium_without_network(trained_run, tmp_path):
    rows = tmp_path / "rows.jsonl"
    write_jsonl(rows, [*synthetic_rows(3, seed=13), {"text": "the film <b>was</b> good & fine", "label": "positive"}])
    page = tmp_path / "x.html"
    code, _, err = run_cli("explain", str(trained_run), "--input", str(rows), "--output", str(page), "--steps", "20")
    assert code == 0, err
    dom, requested = page_requests(page, tmp_path / "net.json")
    assert requested == []
    assert dom.count('class="row"') == 4 and dom.count('class="tok"') >= 4 * 3
    assert "<b>was</b>" not in dom  # the row's markup never reaches the page as markup
    assert "20 steps" in dom and "baseline" in dom
    # the check can fail: a page that loads anything is caught
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://127.0.0.1:9/x.png"></body></html>')
    assert page_requests(control, tmp_path / "net-control.json")[1] == ["http://127.0.0.1:9/x.png"]


def test_report_highlights_the_confident_errors(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "eval" / "test")
    flipped = tmp_path / "flipped.jsonl"  # every label swapped: the run's right answers become its errors
    write_jsonl(flipped, [{**row, "label": "negative" if row["label"] == "positive" else "positive"}
                          for row in synthetic_rows(30, seed=14)])
    code, _, err = run_cli("eval", str(run), "--data", str(flipped))
    assert code == 0, err
    errors = pd.read_csv(run / "eval" / "flipped" / "errors.csv", keep_default_na=False)
    assert len(errors) >= 5
    code, _, err = run_cli("report", str(run))
    assert code == 0, err
    html = (run / "report.html").read_text(encoding="utf-8")
    section = html[html.index('id="errors"'):html.index('id="timings"')]
    assert "integrated gradients toward the predicted label" in section
    shown = errors.head(20)
    assert section.count("<tr>") - 1 == len(shown)
    assert section.count('class="tok"') == sum(len(text.split()) for text in shown["text"])  # every token, once
