"""`tuneforge search --storage postgresql://... --jobs 2` against a real PostgreSQL server (the one .ci/run starts,
named by TUNEFORGE_TEST_POSTGRES_URL): the trials split between the two workers, and a worker killed with SIGKILL
in the middle of a trial leaves that trial failed and retried once with the same values — no trial lost, none
run twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import run_cli, synthetic_rows, write_jsonl
from tuneforge.apps.search.study import HEARTBEAT_GRACE_FACTOR, sqlalchemy_url

TRIALS = 4
HEARTBEAT_S = 1  # the test's workers beat every second: a dead worker's trial is stale after 3 s


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get("TUNEFORGE_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("TUNEFORGE_REQUIRE_POSTGRES"):
            pytest.fail("TUNEFORGE_REQUIRE_POSTGRES is set but TUNEFORGE_TEST_POSTGRES_URL is not: .ci/run starts "
                        "the server (.ci/postgres.sh)")
        pytest.skip("no PostgreSQL server: set TUNEFORGE_TEST_POSTGRES_URL=postgresql://user@host:port/db "
                    "(.ci/run starts one with .ci/postgres.sh)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver psycopg is not installed (pip install -e '.[dev]')")
    return url


def search_job(folder: Path, tiny_model: Path) -> tuple[Path, Path]:
    write_jsonl(folder / "train.jsonl", synthetic_rows(200, seed=1))
    recipe = folder / "recipe.yaml"
    recipe.write_text(f"""name: pg-search
model: {tiny_model}
data: {{train: train.jsonl, max_length: 32, validation_fraction: 0.25}}
method: {{name: full}}
train: {{epochs: 2, batch_size: 16, learning_rate: 3.0e-3, warmup_ratio: 0.0, early_stopping: null, num_threads: 1}}
""", encoding="utf-8")
    space = folder / "space.yaml"
    space.write_text("train.learning_rate: {type: loguniform, low: 1.0e-5, high: 3.0e-2}\n"
                     "train.weight_decay: {type: uniform, low: 0.0, high: 0.1}\n", encoding="utf-8")
    return recipe, space


def test_two_workers_share_a_postgres_study_and_a_killed_workers_trial_is_retried(postgres_url, tiny_model,
                                                                                   tmp_path, capsys):
    import optuna
    from optuna.trial import TrialState

    recipe, space = search_job(tmp_path, tiny_model)
    study_name = f"pg-{uuid.uuid4().hex[:10]}"  # one database serves every test run: a study of its own
    args = ["search", str(recipe), "--space", str(space), "--output", str(tmp_path / "out"), "--storage",
            postgres_url, "--study-name", study_name, "--pruner", "none", "--sampler", "random",
            "--heartbeat", str(HEARTBEAT_S), "--trials", str(TRIALS)]
    storage = sqlalchemy_url(postgres_url)
    process = subprocess.Popen([sys.executable, "-m", "tuneforge", *args, "--jobs", "2"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, start_new_session=True,
                               env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    victim = None
    try:
        deadline = time.time() + 300
        while victim is None and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
            try:
                trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
            except KeyError:  # the study is not created yet
                continue
            finished_by = {t.user_attrs["worker"]["pid"] for t in trials if t.state.is_finished()}
            # a trial in the middle of its training, on a worker that has already finished a trial of its own
            for trial in trials:
                worker = trial.user_attrs.get("worker")
                if trial.state == TrialState.RUNNING and worker and worker["pid"] in finished_by and \
                        (Path(trial.user_attrs.get("run_dir", "/nonexistent")) / "metrics.jsonl").exists():
                    os.kill(worker["pid"], signal.SIGKILL)
                    victim, killed_at = trial, time.time()
                    break
        assert victim is not None, "no trial was caught running: " + process.stderr.read().decode()[-2000:]
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 1 and "exited with an error" in stderr.decode(), stderr.decode()[-2000:]

    # The same command again (as after any crash; one worker, in this process): it fails the dead worker's trial
    # if no worker has yet, runs its retry, and fills what is missing.
    time.sleep(max(0.0, killed_at + HEARTBEAT_GRACE_FACTOR * HEARTBEAT_S + 1 - time.time()))
    code, _, err = run_cli(*args, "--jobs", "1")
    assert code == 0, err

    trials = optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
    by_number = {t.number: t for t in trials}
    killed = by_number[victim.number]
    # The heartbeat stopped: marked failed, not left running and not completed. (Whether its model folder was
    # already written is a race on a fast machine: the trial is told to the study only after the test split.)
    assert killed.state == TrialState.FAIL
    # Optuna's retry callback records the trial it retries as the system attribute "failed_trial"
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1, [t.number for t in retries]  # retried once, not twice
    assert retries[0].params == killed.params and retries[0].state == TrialState.COMPLETE

    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    # None lost: the study reaches its count. When the surviving worker already completed the count before the
    # rerun (a fast machine), the rerun still runs the dead trial's retry: one more, never a duplicate of any other.
    assert len(finished) in (TRIALS, TRIALS + 1), [t.number for t in finished]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert len({t.user_attrs["run_dir"] for t in trials}) == len(trials)  # one run folder per trial
    params = [json.dumps(t.params, sort_keys=True) for t in trials]
    assert all(params.count(p) == (2 if p == json.dumps(killed.params, sort_keys=True) else 1) for p in params)
    victim_pid = victim.user_attrs["worker"]["pid"]
    pids = {t.user_attrs["worker"]["pid"] for t in finished}
    assert victim_pid in pids and pids - {victim_pid}  # both workers of the first command finished trials
    with capsys.disabled():
        per_worker = {pid: sum(t.user_attrs["worker"]["pid"] == pid for t in finished) for pid in sorted(pids)}
        print(f"\npostgres search: {len(trials)} trials: {len(finished)} completed, killed trial {victim.number} "
              f"FAIL, retried as trial {retries[0].number} with the same values; completed per worker process "
              f"{per_worker}")


def test_plain_postgresql_urls_use_psycopg3_and_the_heartbeat_is_checked(tmp_path, tiny_model):
    import importlib.util

    if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
        assert sqlalchemy_url("postgresql://u@db.example/studies") == "postgresql+psycopg://u@db.example/studies"
    assert sqlalchemy_url("postgresql+psycopg://u@h/d") == "postgresql+psycopg://u@h/d"
    assert sqlalchemy_url("sqlite:///study.db") == "sqlite:///study.db"
    recipe, space = search_job(tmp_path, tiny_model)
    code, _, err = run_cli("search", str(recipe), "--space", str(space), "--trials", "1", "--heartbeat", "0",
                           "--output", str(tmp_path / "out"))
    assert code == 1 and "--heartbeat must be at least 1 second" in err and not (tmp_path / "out").exists()
