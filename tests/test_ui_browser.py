"""`tuneforge ui` in a real browser: headless Chromium (Debian's package, driven by Playwright) goes through the
runs table, the compare view, a bad recipe on the launch page, and a run launched from it whose curve grows until
it finishes. Every request the pages make is checked: anything not addressed to the dashboard fails the test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tuneforge.apps.ui.app import create_app
from ui_jobs import LiveServer, train_finished_runs, wait_until, write_job

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium); "
                                                         "the browser test of the dashboard is skipped")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]


class Dashboard:
    def __init__(self, url: str, context, runs: Path) -> None:
        self.url, self.context, self.runs = url, context, runs
        self.elsewhere: list[str] = []  # requests not addressed to the dashboard (refused)

    def guard(self, route) -> None:
        url = route.request.url
        if url.startswith(self.url + "/") or url.startswith("data:"):
            route.continue_()
        else:
            self.elsewhere.append(url)
            route.abort()

    def open(self, path: str):
        page = self.context.new_page()
        page.set_default_timeout(30_000)
        page.goto(self.url + path)
        return page


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ui-browser")
    job = write_job(folder / "recipes")
    runs = folder / "runs"
    train_finished_runs(job, runs)
    app = create_app(runs, [job])
    with LiveServer(app) as server, playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        context = browser.new_context(viewport={"width": 1300, "height": 1000})
        board = Dashboard(server.url, context, runs)
        context.route("**/*", board.guard)
        yield board
        browser.close()
    assert board.elsewhere == [], f"pages requested the network: {board.elsewhere}"


def curve_points(page, chart: str) -> list[int]:
    return [int(n) for n in page.eval_on_selector_all(f"#{chart} polyline", "nodes => nodes.map(n => n.dataset.count)")]


def test_runs_table_lists_the_finished_runs_and_sorts_and_filters(dashboard):
    page = dashboard.open("/")
    page.wait_for_selector('tr[data-run="quick-a"][data-state="finished"]')
    page.wait_for_selector('tr[data-run="quick-b"][data-state="finished"]')
    row = page.inner_text('tr[data-run="quick-a"]')
    assert "classification" in row and "full" in row and "f1_macro (test)" in row and "passed" in row
    page.click('th[data-key="name"]')
    assert page.eval_on_selector_all("#runs-body tr", "rows => rows.map(r => r.dataset.run)") == ["quick-a", "quick-b"]
    page.click('th[data-key="name"]')
    assert page.eval_on_selector_all("#runs-body tr", "rows => rows.map(r => r.dataset.run)") == ["quick-b", "quick-a"]
    page.fill("#filter", "freeze")
    page.wait_for_function("() => document.querySelectorAll('#runs-body tr').length === 1")
    assert page.get_attribute("#runs-body tr", "data-run") == "quick-b"
    page.close()
    assert dashboard.elsewhere == []


def test_compare_overlays_both_runs_and_shows_the_keys_that_differ(dashboard):
    page = dashboard.open("/compare?runs=quick-a&runs=quick-b")
    page.wait_for_function("() => document.querySelectorAll('#validation-svg polyline').length === 2")
    assert len(curve_points(page, "loss-svg")) == 2 and min(curve_points(page, "loss-svg")) >= 10
    assert curve_points(page, "validation-svg") == [2, 2]  # two epochs each
    keys = page.eval_on_selector_all("#differing tr[data-key]", "rows => rows.map(r => r.dataset.key)")
    assert {"name", "train.learning_rate", "method.name"} <= set(keys)
    assert "Δ quick-b − quick-a" in page.inner_text("#metrics")
    page.close()
    assert dashboard.elsewhere == []


def test_a_bad_recipe_shows_its_validation_error_beside_the_field(dashboard):
    page = dashboard.open("/launch")
    page.wait_for_selector('#recipe option[value="0:bad.yaml"]', state="attached")
    page.select_option("#recipe", "0:bad.yaml")
    page.click("#check")
    page.wait_for_function("() => document.getElementById('error-recipe').textContent.length > 0")
    assert "train.learning_rate" in page.inner_text("#error-recipe")
    assert page.is_disabled("#start")
    page.close()
    assert dashboard.elsewhere == []


def test_a_launched_run_appears_its_curve_grows_and_it_finishes(dashboard):
    page = dashboard.open("/launch")
    page.wait_for_selector('#recipe option[value="0:launch.yaml"]', state="attached")
    page.select_option("#recipe", "0:launch.yaml")
    page.click("#check")
    page.wait_for_selector("#check-result.ok")
    page.click("#start")
    page.wait_for_url("**/run?name=launched-*")
    name = page.url.split("name=")[1]

    table = dashboard.open("/")
    table.wait_for_selector(f'tr[data-run="{name}"]')  # listed while it starts, then running

    first = wait_until(lambda: sum(curve_points(page, "loss-svg")), 300, "the first loss point", every=0.2)
    wait_until(lambda: sum(curve_points(page, "loss-svg")) > first, 300, "the loss curve to grow", every=0.2)
    page.wait_for_selector('#run-status [data-state="finished"]', timeout=400_000)
    # every step: 12 epochs x 27 batches of 8 (216 training rows once 10% are held out for validation)
    assert sum(curve_points(page, "loss-svg")) == 12 * 27
    assert curve_points(page, "validation-svg") == [12]
    page.wait_for_selector('section[data-split="test"] img.matrix')
    assert page.eval_on_selector('section[data-split="test"] img.matrix', "img => img.naturalWidth") > 100
    page.wait_for_selector('#report[src$="/files/report.html"]', state="attached")  # written just after the status
    table.wait_for_selector(f'tr[data-run="{name}"][data-state="finished"]', timeout=30_000)
    page.close()
    table.close()
    assert (dashboard.runs / name / "model").is_dir()
    assert dashboard.elsewhere == []
