"""`tuneforge ui` without a browser: what it refuses (paths out of its folders, other hosts without the token,
actions from elsewhere), the launch form's errors by field, plan's estimate, and stop → resume of a run it
started, which must end exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from conftest import run_cli
from tuneforge.apps.ui.app import create_app
from tuneforge.apps.ui.rundata import differing_keys, display_status, read_metrics
from tuneforge.apps.ui.safety import Guard
from ui_jobs import run_status, wait_until, write_job

LOCAL = "http://127.0.0.1:7860"
TIMING_FIELDS = ("samples_per_s", "train_seconds")


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    return write_job(tmp_path_factory.mktemp("ui-job"))


@pytest.fixture()
def runs(tmp_path) -> Path:
    """A runs folder with one finished-looking run (run.json and a file), and a secret beside the folder."""
    folder = tmp_path / "runs"
    run = folder / "done"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"status": "completed", "task": "classification"}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')  # the last line is half-written
    (tmp_path / "secret.txt").write_text("not for the browser")
    return folder


def client(runs: Path, job: Path, host: str = "127.0.0.1", base_url: str = LOCAL) -> TestClient:
    return TestClient(create_app(runs, [job], host=host), base_url=base_url)


def test_paths_outside_the_runs_and_recipe_folders_are_refused(runs, job, tmp_path):
    web = client(runs, job)
    assert web.get("/api/runs/done/files/run.json").status_code == 200
    (runs / "done" / "escape").symlink_to(tmp_path / "secret.txt")
    for path in ("/api/runs/done/files/%2e%2e/%2e%2e/secret.txt", "/api/runs/done/files/..%2F..%2Fsecret.txt",
                 "/api/runs/done/files/%2Fetc%2Fpasswd", "/api/runs/done/files/escape",
                 "/api/runs/..%2F..%2Fsecret.txt/metrics", "/api/runs/../files/secret.txt", "/api/runs/../metrics",
                 "/api/runs/%2e%2e/metrics", "/api/compare?runs=done&runs=..%2Fsecret.txt"):
        response = web.get(path)
        assert response.status_code in (403, 404), path
        assert "not for the browser" not in response.text, path
    assert web.get("/api/runs/%2e%2e/metrics").status_code == 403
    assert "outside the folders" in web.get("/api/runs/done/files/escape").json()["error"]
    # the launch form: a recipe id or a data file out of the folders
    bad = {"recipe": "0:../secret.txt"}
    answer = web.post("/api/validate", json=bad)
    assert answer.status_code == 422 and "outside the folders" in answer.json()["errors"]["recipe"][0]
    answer = web.post("/api/validate", json={"recipe": "0:launch.yaml", "data": "../secret.txt"})
    assert answer.status_code == 422 and "outside the folders" in answer.json()["errors"]["data"][0]
    answer = web.post("/api/validate", json={"recipe": "0:launch.yaml", "overrides": "data.test=/etc/passwd"})
    assert answer.status_code == 422 and "outside the folders" in answer.json()["errors"]["overrides"][0]


def test_another_host_needs_the_token_and_actions_come_from_the_dashboard(runs, job):
    assert Guard.for_host("127.0.0.1").token is None and Guard.for_host("localhost").token is None
    app = create_app(runs, [job], host="0.0.0.0")
    token = app.state.guard.token
    assert token and len(token) >= 24
    web = TestClient(app, base_url="http://192.0.2.10:7860")  # a documentation address: nothing is sent
    assert web.get("/api/runs").status_code == 401
    assert web.get("/").status_code == 401 and web.get("/static/app.js").status_code == 401
    assert web.get("/api/runs?token=wrong").status_code == 401
    first = web.get(f"/?token={token}")  # the printed URL: the answer sets a cookie for the page's own requests
    assert first.status_code == 200 and "tuneforge_ui_token" in first.headers["set-cookie"]
    assert web.get("/api/runs").status_code == 200  # the cookie
    bearer = TestClient(app, base_url="http://192.0.2.10:7860")
    assert bearer.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # bound to this machine: a request naming another host (DNS rebinding) is refused
    local = client(runs, job)
    assert local.get("/api/runs").status_code == 200
    assert local.get("/api/runs", headers={"Host": "attacker.example"}).status_code == 403
    # actions: JSON only, and not from another site's page
    assert local.post("/api/runs/done/stop", content="x", headers={"Content-Type": "text/plain"}).status_code == 415
    assert local.post("/api/runs/done/stop", json={}, headers={"Origin": "http://attacker.example"}).status_code == 403
    assert local.post("/api/runs/done/stop", json={}, headers={"Origin": LOCAL}).status_code == 409  # nothing runs
    # every answer tells the browser to load nothing from elsewhere
    assert "default-src 'self'" in local.get("/").headers["content-security-policy"]


def test_validation_errors_are_sorted_to_their_fields(runs, job):
    web = client(runs, job)
    choices = web.get("/api/launch").json()
    assert {"0:launch.yaml", "0:bad.yaml"} <= {r["id"] for r in choices["recipes"]} and "lora" in choices["methods"]
    ok = web.post("/api/validate", json={"recipe": "0:launch.yaml"}).json()
    assert ok["ok"] and ok["job"]["labels"] == 2 and ok["job"]["rows"]["test"] == 60
    errors = web.post("/api/validate", json={"recipe": "0:bad.yaml"}).json()["errors"]
    assert list(errors) == ["recipe"] and "train.learning_rate" in errors["recipe"][0]
    errors = web.post("/api/validate", json={"recipe": "0:launch.yaml", "method": "nope"}).json()["errors"]
    assert list(errors) == ["method"] and "unknown method 'nope'" in errors["method"][0]
    errors = web.post("/api/validate", json={"recipe": "0:launch.yaml", "data": "missing.jsonl"}).json()["errors"]
    assert list(errors) == ["data"] and "not found" in errors["data"][0]
    errors = web.post("/api/validate", json={"recipe": "0:launch.yaml",
                                             "overrides": "train.epochs=0\nno equals sign"}).json()["errors"]
    assert list(errors) == ["overrides"] and "KEY=VALUE" in errors["overrides"][0]
    errors = web.post("/api/validate", json={"recipe": "0:launch.yaml", "overrides": "train.epochs=0"}).json()["errors"]
    assert list(errors) == ["overrides"] and "train.epochs" in errors["overrides"][0]
    # without a recipe file the fields make one; each missing field says so
    errors = web.post("/api/validate", json={"model": "tiny-bert"}).json()["errors"]
    assert set(errors) == {"data", "method"}
    made = web.post("/api/validate", json={"model": "tiny-bert", "data": "train.jsonl", "method": "lora"}).json()
    assert made["ok"] and made["job"]["method"] == "lora" and made["job"]["name"] == "train"


def test_metrics_are_read_as_they_grow_and_recipes_compared(runs):
    first = read_metrics(runs / "done")
    assert [line["step"] for line in first["lines"]] == [1] and first["offset"] == len('{"step": 1, "loss": 0.5}\n')
    with (runs / "done" / "metrics.jsonl").open("a") as stream:
        stream.write('ss": 0.4}\n')
    second = read_metrics(runs / "done", first["offset"])
    assert [line["step"] for line in second["lines"]] == [2] and not second["reset"]
    (runs / "done" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')  # a resume cut it back
    assert read_metrics(runs / "done", second["offset"])["reset"]
    rows = differing_keys([{"train": {"epochs": 2, "lr": 1}, "name": "a"}, {"train": {"epochs": 2, "lr": 2}}])
    assert rows == [{"key": "name", "values": ["a", None]}, {"key": "train.lr", "values": [1, 2]}]
    assert display_status("completed") == ("finished", None)
    assert display_status("completed: did not learn") == ("finished", "did not learn")
    assert display_status("interrupted") == ("interrupted", None) and display_status(None) == ("unknown", None)


def test_plan_estimate_for_the_form(runs, job):
    answer = client(runs, job).post("/api/plan", json={"recipe": "0:launch.yaml", "method": "lora"})
    assert answer.status_code == 200, answer.text
    plan = answer.json()["plan"]
    assert plan["method"] == "lora" and plan["epochs"] == 12 and plan["device"] == "cpu"
    assert 0 < plan["peak_gb"] < 8 and plan["minutes"] == pytest.approx(plan["minutes_per_epoch"] * 12)
    assert 0 < plan["trainable_params"] < plan["total_params"]


def metrics_without_timings(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_FIELDS} for line in lines]


def test_stop_then_resume_from_the_dashboard_matches_an_uninterrupted_run(job, tmp_path):
    reference = tmp_path / "reference"
    shorter = "train.epochs=4"  # 108 optimizer steps: the stop lands mid-run, the test stays short
    code, _, err = run_cli("train", str(job / "launch.yaml"), "--set", shorter, "--output", str(reference))
    assert code == 0, err
    runs = tmp_path / "runs"
    web = client(runs, job)
    started = web.post("/api/launch", json={"recipe": "0:launch.yaml", "overrides": shorter})
    assert started.status_code == 200, started.text
    name = started.json()["run"]
    run = runs / name
    assert name.startswith("launched-")
    assert name in [row["name"] for row in web.get("/api/runs").json()["runs"]]  # listed while it starts
    wait_until(lambda: (run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").stat().st_size > 0, 240,
               "the first logged step", every=0.02)
    assert web.post(f"/api/runs/{name}/stop", json={}).status_code == 200
    child = web.app.state.processes.get(name)
    assert child.process.wait(timeout=120) == 130
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "interrupted" and status["checkpoint"], status
    assert not (run / "model").exists()  # stopped mid-training, not after it
    row = next(r for r in web.get("/api/runs").json()["runs"] if r["name"] == name)
    assert row["state"] == "interrupted" and row["can_resume"] and not row["can_stop"]

    assert web.post(f"/api/runs/{name}/resume", json={}).status_code == 200
    assert web.post(f"/api/runs/{name}/resume", json={}).status_code == 409  # already running
    assert web.app.state.processes.get(name).process.wait(timeout=300) == 0, web.get(f"/api/runs/{name}").json()["log"]
    assert run_status(run) == "completed"
    log = web.get(f"/api/runs/{name}").json()["log"]
    assert "--resume" in log and "resume with: tuneforge train --resume" in log

    ours, theirs = load_file(run / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key
    assert metrics_without_timings(run) == metrics_without_timings(reference)
    ours, theirs = json.loads((run / "run.json").read_text()), json.loads((reference / "run.json").read_text())
    assert ours["test"] == theirs["test"] and ours["validation"] == theirs["validation"]
    assert os.path.getsize(run / "report.html") > 0
