"""``tuneforge search --jobs 2``: two worker processes share one study, and both of them run trials
(docs/reliability.md §7). Kept apart from tests/test_search.py so that its storage tests can change freely."""

from __future__ import annotations

from collections import Counter

from conftest import run_cli
from test_search import _search_job


def test_two_workers_both_run_trials_of_one_study(tmp_path, tiny_model):
    import optuna

    recipe, space = _search_job(tmp_path, tiny_model, epochs=1)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    code, _, err = run_cli("search", str(recipe), "--space", str(space), "--output", str(tmp_path / "out"),
                           "--storage", storage, "--pruner", "none", "--trials", "6", "--jobs", "2")
    assert code == 0, err
    trials = optuna.load_study(study_name="tiny-search", storage=storage).get_trials(deepcopy=False)
    finished = [trial for trial in trials if trial.state.is_finished()]
    assert len(finished) >= 6
    by_worker = Counter(trial.user_attrs["worker"]["index"] for trial in finished)
    pids = {trial.user_attrs["worker"]["pid"] for trial in finished}
    assert set(by_worker) == {0, 1} and len(pids) == 2, by_worker  # each worker (its own process) ran trials
    assert len({trial.number for trial in finished}) == len(finished)  # no trial counted twice
