"""The Optuna study behind ``tuneforge search``: one trial = one ``tuneforge train`` run with some recipe keys set.

What this module owns: checking the search up front (recipe, data, model config, space file, metric), the search
folder and its ``search.json``, opening the study in its storage, the objective (a trial's run folder, the
per-epoch report to the pruner), and the worker processes of ``--jobs``. It does not train (``train.loop``) nor
write the summary (:mod:`tuneforge.apps.search.report`).

Persistence and parallelism are Optuna's own: every trial lives in an RDB storage (by default the SQLite file
``study.db`` in the search folder; any SQLAlchemy URL works the same, so several machines can share one study).
A rerun with the same storage and study name loads the study and runs only the trials still missing, so a
killed search continues where it stopped. Workers send a heartbeat every ``--heartbeat`` seconds; a trial whose
worker died is marked failed by Optuna once its heartbeat is ``HEARTBEAT_GRACE_FACTOR`` times older than that
(checked whenever any worker starts a trial), and retried once with the same values (Optuna's
``RetryHeartbeatStaleTrialCallback``), so a killed worker loses no trial. ``postgresql://`` URLs use psycopg (v3)
when psycopg2 is not installed.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.base.errors import UserError, did_you_mean
from tuneforge.apps.search.space import Parameter, check_space_against_recipe, load_space, override_item, parse_space
from tuneforge.base.atomic import write_json_atomic
from tuneforge.base.recipe import LOWER_IS_BETTER, METRIC_NAMES, dump_recipe
from tuneforge.core.engine.runtime import physical_cores
from tuneforge.core.engine.validate import validate_job
from tuneforge.core.recipe import load_recipe
from tuneforge import __version__
from tuneforge.core.tasks import TASKS, task_for
from tuneforge.base.runfolder import RunStatus, new_run_dir
from tuneforge.core.engine.loop import train

SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
SPEC_FILE = "search.json"
HEARTBEAT_INTERVAL_S = 20
HEARTBEAT_GRACE_FACTOR = 3  # a trial whose heartbeat is this many intervals old is failed (and retried once)
MAX_RETRIES = 1


def _counted_states():
    from optuna.trial import TrialState

    return (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class SearchSpec:
    """Everything a worker needs to run trials of one study; saved as ``search.json`` in the search folder."""

    recipe: str
    space_file: str
    space: dict[str, Any]
    storage: str
    study_name: str
    metric: str
    direction: str
    sampler: str
    pruner: str
    trials: int
    jobs: int
    output: str
    seed: int
    overrides: list[str] = field(default_factory=list)
    heartbeat_s: int = HEARTBEAT_INTERVAL_S

    @property
    def parameters(self) -> list[Parameter]:
        return parse_space(self.space, self.space_file)

    def save(self) -> None:
        write_json_atomic(Path(self.output) / SPEC_FILE, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "SearchSpec":
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def prepare_search(recipe_path: str, space_path: str, trials: int, storage: str | None = None, jobs: int = 1,
                   pruner: str = "median", sampler: str = "tpe", metric: str | None = None,
                   study_name: str | None = None, output: str | None = None,
                   overrides: list[str] | None = None, log=print,
                   heartbeat_s: int = HEARTBEAT_INTERVAL_S) -> SearchSpec:
    """Check everything that can be checked before the first trial, create (or reopen) the search folder."""

    if trials < 1:
        raise UserError(f"--trials must be at least 1 (got {trials})")
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1 (got {jobs})")
    if heartbeat_s < 1:
        raise UserError(f"--heartbeat must be at least 1 second (got {heartbeat_s})")
    if pruner not in PRUNERS:
        raise UserError(f"--pruner {pruner!r} unknown{did_you_mean(pruner, PRUNERS)}; choose {', '.join(PRUNERS)}")
    if sampler not in SAMPLERS:
        raise UserError(f"--sampler {sampler!r} unknown{did_you_mean(sampler, SAMPLERS)}; choose {', '.join(SAMPLERS)}")
    overrides = list(overrides or [])
    job = validate_job(recipe_path, overrides)  # recipe keys, data files, labels, model config: before any trial
    recipe = job.recipe
    task = task_for(recipe.task)
    if not task.supports_search:
        supported = ", ".join(name for name, kind in TASKS.items() if kind.supports_search)
        raise UserError(f"tuneforge search: task {recipe.task} is not supported yet ({supported} only)")
    parameters = load_space(space_path)
    check_space_against_recipe(parameters, recipe_path, overrides, space_path)
    if metric is None:  # the metric the recipe keeps its best epoch by (a language model: its validation loss)
        selection = task.model_selection(recipe.train.early_stopping)
        metric = selection.metric if selection.keep_best else task.search_metric
    if metric not in METRIC_NAMES:
        raise UserError(f"--metric {metric!r} unknown{did_you_mean(metric, METRIC_NAMES)}; "
                        f"choose one of {', '.join(METRIC_NAMES)}")
    if jobs > 1 and recipe.train.num_threads is None and not any(o.startswith("train.num_threads=") for o in overrides):
        # Parallel trials would each take every core; share them out instead.
        overrides.append(f"train.num_threads={max(1, physical_cores() // jobs)}")

    study_name = study_name or recipe.name
    folder = Path(output) if output else Path("runs") / f"{study_name}-search"
    folder = folder.resolve()
    previous = folder / SPEC_FILE
    if previous.is_file():
        before = SearchSpec.load(previous)
        if before.study_name != study_name:
            raise UserError(f"{folder}: holds the search of study '{before.study_name}', not '{study_name}'; "
                            "choose another --output or the same --study-name")
        if storage is not None and storage != before.storage:
            raise UserError(f"{folder}: its study lives in {before.storage}, not {storage}; drop --storage to "
                            "continue it, or choose another --output")
        storage = before.storage
        log(f"search folder {folder} exists: continuing study '{study_name}' in {storage}")
    elif folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder}: already exists and is not a search folder; tuneforge never overwrites it. "
                        "Choose another --output or remove that folder yourself")
    folder.mkdir(parents=True, exist_ok=True)
    storage = storage or f"sqlite:///{folder / 'study.db'}"
    spec = SearchSpec(recipe=str(Path(recipe_path).resolve()), space_file=str(space_path),
                      space={p.key: p.to_dict() for p in parameters}, storage=storage, study_name=study_name,
                      metric=metric, direction="minimize" if metric in LOWER_IS_BETTER else "maximize",
                      sampler=sampler, pruner=pruner, trials=trials, jobs=jobs, output=str(folder),
                      seed=recipe.train.seed, overrides=overrides, heartbeat_s=heartbeat_s)
    study = open_study(spec)
    _check_same_study(study, spec)
    spec.save()
    return spec


def sqlalchemy_url(url: str) -> str:
    """``url`` as SQLAlchemy should open it: a plain ``postgresql://`` means psycopg2 to SQLAlchemy; when only
    psycopg (v3, tuneforge's dev extra) is installed, use that driver."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg2") is None and \
            importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://"):]
    return url


def open_study(spec: SearchSpec, worker: int = 0):
    """Create or load the study in its storage, with the spec's sampler and pruner."""
    import optuna

    try:  # Optuna >= 4.9 names the retry after what triggers it
        from optuna.storages import RetryHeartbeatStaleTrialCallback as Retry
        retry_argument = "heartbeat_stale_trial_callback"
    except ImportError:
        from optuna.storages import RetryFailedTrialCallback as Retry
        retry_argument = "failed_trial_callback"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    engine_kwargs = ({"connect_args": {"timeout": 120}} if spec.storage.startswith("sqlite")
                     else {"pool_pre_ping": True})
    try:
        with warnings.catch_warnings():  # heartbeat and retry are "experimental" in Optuna; they resume killed runs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = {retry_argument: Retry(max_retry=MAX_RETRIES)}
            storage = optuna.storages.RDBStorage(
                sqlalchemy_url(spec.storage), engine_kwargs=engine_kwargs, heartbeat_interval=spec.heartbeat_s,
                grace_period=HEARTBEAT_GRACE_FACTOR * spec.heartbeat_s, **retry)
    except Exception as exc:  # noqa: BLE001 - a bad URL, a missing driver, an unreachable server
        raise UserError(f"--storage {spec.storage}: cannot open it ({type(exc).__name__}: {exc}); "
                        "give a SQLAlchemy URL such as sqlite:///study.db or postgresql://user@host/db") from None
    epochs = _epochs(spec)
    if spec.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    elif spec.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    else:
        pruner = optuna.pruners.NopPruner()
    try:
        study = optuna.create_study(storage=storage, study_name=spec.study_name, direction=spec.direction,
                                    pruner=pruner, load_if_exists=True)
    except ValueError as exc:  # e.g. the stored study optimises in the other direction
        raise UserError(f"study '{spec.study_name}' in {spec.storage}: {exc}; use another --study-name") from None
    # The seed differs per worker and per (re)start, or parallel workers, and a resumed search, would replay the
    # same random draws and propose points the study has already tried.
    seed = spec.seed + 1000 * worker + len(study.get_trials(deepcopy=False))
    if spec.sampler == "tpe":  # random start-up trials: a third of a small budget, at most Optuna's 10
        study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(3, min(10, spec.trials // 3)))
    else:
        study.sampler = optuna.samplers.RandomSampler(seed=seed)
    return study


def _epochs(spec: SearchSpec) -> int:
    epochs_parameter = spec.space.get("train.epochs")
    if epochs_parameter is not None:
        return int(max(epochs_parameter.get("values") or [epochs_parameter.get("high", 1)]))

    return load_recipe(spec.recipe, spec.overrides).train.epochs


def _check_same_study(study, spec: SearchSpec) -> None:
    """A study continued with another space or metric would mix incomparable trials: refuse."""
    attributes = study.user_attrs
    if "tuneforge_space" not in attributes:
        study.set_user_attr("tuneforge_space", spec.space)
        study.set_user_attr("tuneforge_metric", spec.metric)
        study.set_user_attr("tuneforge_recipe", spec.recipe)
        return
    if attributes["tuneforge_space"] != spec.space:
        raise UserError(f"study '{spec.study_name}' in {spec.storage} was created with another search space "
                        f"({json.dumps(attributes['tuneforge_space'])}); use the same --space or a new --study-name")
    if attributes.get("tuneforge_metric") != spec.metric:
        raise UserError(f"study '{spec.study_name}' optimises {attributes.get('tuneforge_metric')}, not {spec.metric}; "
                        "use the same --metric or a new --study-name")


def finished_trials(study) -> int:
    """Trials that ran to an answer (completed or pruned): what ``--trials`` counts. Failed trials (a combination
    the recipe refuses, a worker that was killed) do not count, so a rerun replaces them."""
    return len(study.get_trials(deepcopy=False, states=_counted_states()))


class Objective:
    """One trial: draw the space's values, train the recipe with them into ``trials/trial-NNNN/``, report each
    epoch's validation metric to the pruner; the value is the metric at the run's best epoch."""

    def __init__(self, spec: SearchSpec, worker: int = 0) -> None:
        self.spec = spec
        self.worker = worker
        self.parameters = spec.parameters

    def suggest(self, trial) -> dict[str, Any]:
        """The recipe keys this trial sets: one value per space parameter, drawn from the trial. (``tuneforge
        auto`` draws a conditional space instead: LoRA's rank only when the method is LoRA.)"""
        return {parameter.key: parameter.suggest(trial) for parameter in self.parameters}

    def __call__(self, trial) -> float:
        import optuna


        spec = self.spec
        values = self.suggest(trial)
        # who ran it: several workers, possibly on several machines, share the storage
        trial.set_user_attr("worker", {"index": self.worker, "host": socket.gethostname(), "pid": os.getpid()})
        overrides = [*spec.overrides, *(override_item(key, value) for key, value in values.items())]
        run_dir = Path(spec.output) / "trials" / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        try:
            job = validate_job(spec.recipe, overrides)
        except UserError as exc:  # a combination of values the recipe refuses: this trial fails, the search goes on
            trial.set_user_attr("error", str(exc).splitlines()[0])
            raise
        recipe, data = job.recipe, job.data
        new_run_dir(run_dir, recipe.name)
        dump_recipe(recipe, run_dir / "config.yaml")
        if data.label_names:  # a language model has none
            (run_dir / "labels.json").write_text(json.dumps(data.label_names, indent=1, ensure_ascii=False),
                                                 encoding="utf-8")
        status = RunStatus(run_dir, name=recipe.name, task=recipe.task, model=recipe.model, method=recipe.method.name,
                           tuneforge_version=__version__, search={"study": spec.study_name, "trial": trial.number,
                                                                  "params": values},
                           rows={"train": len(data.train), "validation": len(data.validation), "test": 0})
        status.update(data=task_for(recipe.task).data_summary(data))

        def report(epoch: int, metrics: dict[str, Any]) -> None:
            value = metrics.get(spec.metric)
            if value is None or not math.isfinite(value):
                return
            trial.report(float(value), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch} ({spec.metric} {value:.4f})")

        with (run_dir / "train.log").open("w", encoding="utf-8") as log_file:
            def log(message: str) -> None:
                print(message, file=log_file, flush=True)

            try:
                result = train(recipe, data, run_dir, log=log, on_epoch_end=report)
            except optuna.TrialPruned as pruned:
                status.finish("pruned", note=str(pruned))
                raise
            except BaseException as exc:
                status.finish("failed", error=f"{type(exc).__name__}: {exc}")
                trial.set_user_attr("error", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                raise
        value = result.best_metrics.get(spec.metric)
        status.finish("completed", best_epoch=result.best_epoch, validation=dict(result.best_metrics),
                      trainable_params=result.trainable_params, total_params=result.total_params)
        trial.set_user_attr("best_epoch", result.best_epoch)
        if value is None or not math.isfinite(value):
            raise UserError(f"trial {trial.number}: validation {spec.metric} is undefined ({value}); "
                            "choose another --metric")
        return float(value)


def describe_trial(frozen) -> str:
    """One line per finished trial for the terminal."""
    params = ", ".join(f"{key.split('.')[-1]}={_short(value)}" for key, value in frozen.params.items())
    state = frozen.state.name.lower()
    if state == "complete":
        outcome = f"value {frozen.value:.4f}"
    elif state == "pruned":
        steps = sorted(frozen.intermediate_values)
        outcome = f"pruned after epoch {steps[-1]}" if steps else "pruned"
    else:
        outcome = f"{state}: {frozen.user_attrs.get('error', 'see its train.log')}"
    return f"trial {frozen.number}: {params} -> {outcome}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_worker(spec: SearchSpec, worker: int = 0, log=print) -> None:
    """Run trials in this process until the study holds ``spec.trials`` completed or pruned trials."""
    from optuna.study import MaxTrialsCallback

    study = open_study(spec, worker)
    missing = max(spec.trials - finished_trials(study), waiting_retries(study))
    if missing <= 0:
        return

    def announce(study, frozen) -> None:
        log(describe_trial(frozen))

    # At most `missing` attempts per worker: trials that keep failing cannot loop forever; a rerun adds more.
    study.optimize(Objective(spec, worker), n_trials=missing, catch=(UserError,), gc_after_trial=True,
                   callbacks=[MaxTrialsCallback(spec.trials, states=_counted_states()), announce])


def waiting_retries(study) -> int:
    """Trials waiting to run: the retries of trials whose worker died (run even when the count is reached)."""
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


def fail_dead_workers_trials(study, log=print) -> None:
    """Mark failed, and queue a retry of, every running trial whose heartbeat is stale (its worker died)."""
    import optuna

    before = waiting_retries(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    if waiting_retries(study) > before:
        log(f"{waiting_retries(study) - before} trial(s) of dead workers marked failed; each is retried once with "
            "the same values")


def run_search(spec: SearchSpec, log=print) -> None:
    """Run the missing trials: in this process (``jobs`` 1) or in ``jobs`` worker processes sharing the storage."""
    study = open_study(spec)
    fail_dead_workers_trials(study, log)
    done = finished_trials(study)
    missing = max(spec.trials - done, waiting_retries(study))
    if missing <= 0:
        log(f"study '{spec.study_name}' already has {done} completed or pruned trial(s) (--trials {spec.trials}); "
            "nothing to run (raise --trials to add more)")
        return
    log(f"study '{spec.study_name}': {done} completed or pruned trial(s); running {missing} more "
        f"({spec.jobs} worker(s), {spec.sampler} sampler, {spec.pruner} pruner, {spec.direction} {spec.metric})")
    if spec.jobs == 1:
        run_worker(spec, 0, log)
        return
    started = time.perf_counter()
    workers = [subprocess.Popen([sys.executable, "-m", "tuneforge.apps.search.worker",
                                 str(Path(spec.output) / SPEC_FILE), str(index)], env=_worker_env())
               for index in range(spec.jobs)]
    try:
        codes = [process.wait() for process in workers]
    except KeyboardInterrupt:
        for process in workers:
            process.terminate()
        for process in workers:
            process.wait()
        raise
    failed = [str(index) for index, code in enumerate(codes) if code != 0]
    if failed:
        raise UserError(f"search worker(s) {', '.join(failed)} exited with an error "
                        f"(after {time.perf_counter() - started:.0f}s); see the messages above")


def _worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
