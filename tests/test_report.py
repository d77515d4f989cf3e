"""report.html: written at the end of every run, rebuilt by `tuneforge report`, and rendered by a real browser."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest

from conftest import run_cli

SECTIONS = ["Summary", "Recipe", "Data", "Training curves", "Final metrics", "Per-class metrics",
            "Confusion matrix", "Most confident errors", "Timings"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model):
    """One tiny training run shared by the tests of this module."""
    from conftest import synthetic_rows, write_jsonl

    folder = tmp_path_factory.mktemp("report-run")
    write_jsonl(folder / "train.jsonl", synthetic_rows(160, seed=1))
    write_jsonl(folder / "test.jsonl", synthetic_rows(60, seed=2))
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""name: tiny-report
model: {tiny_model}
data: {{train: train.jsonl, test: test.jsonl, max_length: 32}}
method: {{name: full}}
train: {{epochs: 3, batch_size: 16, learning_rate: 3.0e-3, warmup_ratio: 0.0, early_stopping: null, log_every_steps: 2}}
""", encoding="utf-8")
    run = folder / "run"
    code, out, err = run_cli("train", str(recipe), "--output", str(run))
    assert code == 0, err
    return run


def test_train_writes_self_contained_report(finished_run):
    page = (finished_run / "report.html").read_text(encoding="utf-8")
    for title in SECTIONS:
        assert f">{title}</h2>" in page, title
    # self-contained: every image inline, no reference to anything outside the file
    assert page.count('src="data:image/png;base64,') >= 2  # curves + confusion matrix
    assert not re.search(r'(src|href)="(?!data:)', page)
    assert "<script" not in page
    # the facts come from the run folder
    metrics = json.loads((finished_run / "eval/test/metrics.json").read_text())
    assert f"{metrics['accuracy']:.4f}" in page
    assert "negative" in page and "positive" in page
    status = json.loads((finished_run / "run.json").read_text())
    assert status["data"]["label_counts"]["train"]["positive"] > 0


def test_report_command_rebuilds_and_rejects_non_runs(finished_run, tmp_path):
    (finished_run / "report.html").unlink()
    code, out, err = run_cli("report", str(finished_run))
    assert code == 0, err
    assert (finished_run / "report.html").is_file() and "report.html" in out
    code, _, err = run_cli("report", str(tmp_path / "missing"))
    assert code == 1 and "not a folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("report", str(tmp_path / "empty"))
    assert code == 1 and "not a run folder" in err


def test_report_of_an_unfinished_run_says_what_is_missing(finished_run, tmp_path):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.yaml", "labels.json"):
        shutil.copy(finished_run / name, partial / name)
    (partial / "run.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
    code, _, err = run_cli("report", str(partial))
    assert code == 0, err
    page = (partial / "report.html").read_text(encoding="utf-8")
    assert "RuntimeError: boom" in page and "No final metrics" in page
    for title in SECTIONS:
        assert f">{title}</h2>" in page


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def browser(*args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--hide-scrollbars"]
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=120)


def png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and raw scanlines (filter bytes included) of a non-interlaced 8-bit PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, [], None
    while position < len(data):
        length = int.from_bytes(data[position:position + 4], "big")
        kind = data[position + 4:position + 8]
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    width, height = int.from_bytes(header[0:4], "big"), int.from_bytes(header[4:8], "big")
    return width, height, zlib.decompress(b"".join(chunks))


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (apt-get install chromium); "
                                                "the headless-browser check of report.html is skipped")
def test_report_renders_in_headless_chromium(finished_run, tmp_path):
    page = (finished_run / "report.html").resolve()
    screenshot = tmp_path / "report.png"
    result = browser(f"--screenshot={screenshot}", "--window-size=1280,2600", page.as_uri())
    assert screenshot.is_file() and screenshot.stat().st_size > 20_000, result.stderr[-2000:]
    width, height, raw = png_pixels(screenshot)
    assert (width, height) == (1280, 2600)
    # not blank: many distinct byte values across the picture (a white or single-colour page has a handful)
    sample = raw[:: max(1, len(raw) // 200_000)]
    assert len(set(sample)) > 50

    dom = browser("--dump-dom", page.as_uri()).stdout
    for title in SECTIONS:
        assert f">{title}</h2>" in dom, title
    # the browser decoded the inline images (an <img> that failed to load has naturalWidth 0; checked via
    # a data URL page that draws them into the title)
    probe = tmp_path / "probe.html"
    images = re.findall(r'<img alt="([^"]+)" src="(data:image/png;base64,[^"]+)"', page.read_text(encoding="utf-8"))
    assert images
    probe.write_text("<html><body>" + "".join(f'<img id="i{i}" src="{src}">' for i, (_, src) in enumerate(images))
                     + "<script>window.onload=()=>{document.title=[...document.images].map(i=>i.naturalWidth)"
                       ".join(',')}</script></body></html>", encoding="utf-8")
    probed = browser("--dump-dom", "--virtual-time-budget=5000", probe.as_uri()).stdout
    widths = [int(w) for w in re.search(r"<title>([\d,]+)</title>", probed).group(1).split(",")]
    assert all(w > 100 for w in widths), widths
