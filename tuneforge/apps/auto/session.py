"""``tuneforge auto RECIPE --minutes M``: the steps between the recipe and the finishing run.

1. :func:`prepare_auto`: the output folder (new, or the one of an interrupted auto, whose study is continued),
   the data facts (task, labels, lengths → ``data.max_length``, class weights), the completed recipe
   (``auto/recipe.yaml``), ``plan`` (methods that fit ``--memory-gb`` and the time), the trials' rows and the
   search space;
2. :func:`search` — the budgeted study (:mod:`tuneforge.apps.auto.study`);
3. :func:`plan_finish` — the winner's recipe keys for the finishing run, sized to the time left.

The finishing run itself is ``tuneforge train``'s (the command calls it into the same folder), so the run
folder is a normal one; :mod:`tuneforge.apps.auto.writeup` then writes ``auto.md`` and ``auto.json``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tuneforge.apps.auto.budget import FIRST_GUESS_OVERHEAD_S, Budget, TrialClock
from tuneforge.apps.auto.datafacts import DataFacts, read_data_facts, stratified_sample
from tuneforge.apps.auto.finish import FinishPlan
from tuneforge.apps.auto.study import (EPOCH_CHOICES, LEARNING_RATES, SearchSpace, best_trial, linear_module_names,
                                       run_study, trial_records)
from tuneforge.apps.plan import HEADROOM, make_plan
from tuneforge.apps.search.space import override_item
from tuneforge.apps.search.study import SPEC_FILE, SearchSpec, open_study
from tuneforge.base.atomic import write_json_atomic
from tuneforge.base.errors import UserError, did_you_mean
from tuneforge.base.recipe import LOWER_IS_BETTER, METRIC_NAMES, PATH_KEYS, apply_override
from tuneforge.base.tables import read_table, write_table
from tuneforge.core.engine.validate import validate_job
from tuneforge.core.tasks import task_for

AUTO_JSON = "auto.json"
AUTO_MD = "auto.md"
WORK = "auto"  # the search inside the run folder: recipe.yaml, study.db, search.json, trials/, trial-data/
CANDIDATE_METHODS = ("full", "lora", "freeze")
PLAN_SECONDS_PER_METHOD = 15.0  # plan measures each method in a child process: ~15 s each on a busy 2-core CPU
PLAN_SHARE = 0.10  # plan runs only when it takes at most this share of the budget (or --memory-gb needs it)
FINISH_SHARE = 0.35  # at least this share of the budget is kept for the finishing run
TRIALS_WANTED = 8  # trials' rows are cut so that about this many one-epoch trials fit in the search time
MIN_TRIAL_ROWS = 400
# The finish does more than a trial after training: the test evaluation, calibration and report.html (whose
# integrated-gradients pass loads the model again): taken as 3x a trial's own fixed cost (loading, validation,
# saving, the integrity gate) plus 15 s (report.html of a tiny model took 14 s on a busy 2-core machine).
REPORT_SECONDS = 15.0
FINISH_FIXED_FACTOR = 3.0
MAX_TRIAL_VALIDATION = 1000  # trials validate on a stratified sample of a larger validation file


@dataclass
class AutoSession:
    """Everything the steps share; saved (as far as it is state) in ``auto.json``."""

    folder: Path
    recipe_file: Path
    source_recipe: str
    overrides: list[str]
    minutes: float
    memory_gb: float | None
    metric: str
    budget: Budget
    facts: DataFacts
    space: SearchSpace
    spec: SearchSpec
    clock: TrialClock
    plan: dict[str, Any]
    trial_rows: int
    full_rows: int
    choices: dict[str, str] = field(default_factory=dict)  # recipe key or decision -> why
    resumed: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def work(self) -> Path:
        return self.folder / WORK

    @property
    def direction(self) -> str:
        return "minimize" if self.metric in LOWER_IS_BETTER else "maximize"

    def state(self, status: str, **extra: Any) -> dict[str, Any]:
        """The content of ``auto.json`` at this point."""
        return {"status": status, "recipe": self.source_recipe, "overrides": self.overrides,
                "minutes": self.minutes, "memory_gb": self.memory_gb, "metric": self.metric,
                "direction": self.direction, "resumed": self.resumed, "data": self.facts.to_dict(),
                "plan": self.plan, "space": {"searched": self.space.describe(), **self.space.to_dict()},
                "trial_rows": self.trial_rows, "full_rows": self.full_rows,
                "clock": {"planned_epoch_s": self.clock.planned_epoch_s,
                          "measured_epoch_s": self.clock.measured_epoch_s, "overhead_s": self.clock.overhead_s},
                "choices": self.choices, "notes": self.notes, "phases_s": dict(self.budget.phases),
                "elapsed_s": round(self.budget.elapsed(), 2), **extra}

    def save(self, status: str, **extra: Any) -> None:
        write_json_atomic(self.folder / AUTO_JSON, self.state(status, **extra))


def check_arguments(minutes: float, memory_gb: float | None, metric: str | None) -> None:
    if not (minutes > 0 and math.isfinite(minutes)):
        raise UserError(f"--minutes must be a positive number of minutes (got {minutes})")
    if memory_gb is not None and not memory_gb > 0:
        raise UserError(f"--memory-gb must be positive (got {memory_gb})")
    if metric is not None and metric not in METRIC_NAMES:
        raise UserError(f"--metric {metric!r} unknown{did_you_mean(metric, METRIC_NAMES)}; "
                        f"choose one of {', '.join(METRIC_NAMES)}")


def output_folder(output: str | None, name: str) -> tuple[Path, dict[str, Any] | None]:
    """(the folder, the previous auto.json when an interrupted auto is continued). Never overwrites."""
    if output is None:
        folder = Path("runs") / f"{name}-auto-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    else:
        folder = Path(output)
    folder = folder.resolve()
    previous_file = folder / AUTO_JSON
    if previous_file.is_file():
        try:
            previous = json.loads(previous_file.read_text(encoding="utf-8"))
        except ValueError:
            raise UserError(f"{previous_file}: cannot be read; choose another --output") from None
        if previous.get("status") == "completed":
            raise UserError(f"{folder}: holds a finished auto run; tuneforge never overwrites it. Choose another "
                            "--output")
        return folder, previous
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"{folder}: already exists and is not an interrupted auto run; tuneforge never overwrites "
                        "it. Choose another --output or remove that folder yourself")
    try:
        (folder / WORK).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{folder}: cannot create it ({exc.strerror}); choose another --output") from None
    return folder, None


def read_raw_recipe(recipe_path: str) -> dict[str, Any]:
    """The recipe as written, its file paths made absolute (the completed recipe lives elsewhere)."""
    path = Path(recipe_path)
    if not path.is_file():
        raise UserError(f"{recipe_path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        raise UserError(f"{recipe_path}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{recipe_path}: a recipe is a YAML mapping; auto needs `model:` and `data: {{train: FILE}}`")
    for keys in PATH_KEYS:
        node = raw
        for key in keys[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str):
            value = Path(node[keys[-1]])
            node[keys[-1]] = str(value if value.is_absolute() else (path.parent / value).resolve())
    if "model" not in raw:
        raise UserError(f"{recipe_path}: needs `model:` (an alias such as minilm, a folder or a hub id)")
    return raw


def dotted_keys(raw: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        keys.add(dotted)
        if isinstance(value, dict):
            keys |= dotted_keys(value, dotted + ".")
    return keys


def set_key(raw: dict[str, Any], dotted: str, value: Any) -> None:
    node = raw
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def prepare_auto(recipe_path: str, overrides: list[str], minutes: float, memory_gb: float | None,
                 metric: str | None, output: str | None, budget: Budget, log) -> AutoSession:
    """Steps 1-2: folder, data facts, completed recipe, plan, space, study. Continues an interrupted auto."""
    check_arguments(minutes, memory_gb, metric)
    budget.phases["start-up"] = round(budget.elapsed(), 2)  # Python imports before the command ran
    overrides = list(overrides or [])
    raw = read_raw_recipe(recipe_path)
    fixed = dotted_keys(raw)
    for item in overrides:
        fixed.add(".".join(apply_override(raw, item)))
    if "continual.from_run" in fixed or "distill.teacher" in fixed:
        raise UserError("auto: continual (--from) and distillation recipes are not supported yet; use train")
    name = raw.get("name") or re.sub(r"[^A-Za-z0-9._-]+", "-", Path(recipe_path).stem).strip("-._") or "auto"
    folder, previous = output_folder(output, str(name))
    log(f"auto folder: {folder}" + (" (continuing the interrupted auto run there)" if previous else ""))
    if previous is not None:
        return resume_session(folder, previous, recipe_path, overrides, budget, log)

    with budget.phase("data facts"):
        facts = read_data_facts(raw, fixed)
    choices = dict(facts.reasons)
    raw.setdefault("name", name)
    raw.setdefault("method", {"name": "full"})
    for key, value in facts.settings.items():
        set_key(raw, key, value)
    task = task_for(facts.task)
    given = metric is not None
    metric = metric or task.search_metric
    choices["metric"] = (f"validation {metric}, " + ("given with --metric." if given else
                         "the task's default: macro-F1 weighs every class the same, so a class the model never "
                         "predicts costs as much as a large one." if metric == "f1_macro" else
                         "the task's default."))
    if "train.early_stopping" not in fixed:
        set_key(raw, "train.early_stopping", {"metric": metric, "patience": 2})
        choices["train.early_stopping"] = (f"every run keeps its best epoch by validation {metric} and stops after "
                                           "2 epochs without improvement.")
    recipe_file = folder / WORK / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True), encoding="utf-8")
    job = validate_job(recipe_file, overrides)  # every recipe and data problem now, before any model loads
    recipe = job.recipe
    full_rows = len(job.data.train)

    candidates = [raw["method"]["name"]] if "method.name" in fixed else [
        m for m in CANDIDATE_METHODS if task.methods is None or m in task.methods]
    if "method.name" in fixed:
        choices["method.name"] = f"set by you ({candidates[0]}): not searched."
    clock = TrialClock()
    with budget.phase("plan"):
        plan, methods = plan_methods(recipe_file, overrides, candidates, memory_gb, budget, clock, full_rows, log)
    trial_rows = full_rows
    trial_overrides = list(overrides)
    search_s = (1 - FINISH_SHARE) * budget.left()
    slowest = max((clock.planned_epoch_s.get(m, 0.0) for m in methods), default=0.0)
    if slowest > 0 and slowest > search_s / TRIALS_WANTED and full_rows > MIN_TRIAL_ROWS:
        trial_rows = max(MIN_TRIAL_ROWS, int(full_rows * (search_s / TRIALS_WANTED) / slowest))
        if trial_rows < full_rows:
            trial_overrides += trial_data(job, recipe, folder, trial_rows)
            for method in methods:
                clock.planned_epoch_s[method] *= trial_rows / full_rows
            choices["trial rows"] = (f"one epoch on all {full_rows} rows takes ~{slowest:.0f}s (plan), more than "
                                     f"{TRIALS_WANTED} trials can share in the search time: trials train on a "
                                     f"stratified {trial_rows}-row sample; the finish trains on every row.")
    if trial_rows == full_rows:
        choices["trial rows"] = f"trials train on all {full_rows} training rows."
    if recipe.data.validation is not None and len(job.data.validation) > MAX_TRIAL_VALIDATION:
        trial_overrides += trial_validation(recipe, folder)
        choices["trial validation"] = (f"the validation file has {len(job.data.validation)} rows: trials validate on a "
                                       f"stratified {MAX_TRIAL_VALIDATION}-row sample of it (every epoch of every "
                                       "trial validates); the finish on all of it.")

    num_layers, linear = linear_module_names(recipe.model)
    space = SearchSpace(methods=methods, learning_rate="train.learning_rate" not in fixed,
                        epochs="train.epochs" not in fixed, num_layers=num_layers, linear_modules=linear)
    choices["search space"] = ("method x learning rate x epochs x LoRA rank and target layers x freeze depth; the "
                               "learning-rate ranges differ per method (few fresh weights want larger steps); keys "
                               "you set are not searched.")
    spec = SearchSpec(recipe=str(recipe_file), space_file="(tuneforge auto)", space=space.flat(),
                      storage=f"sqlite:///{folder / WORK / 'study.db'}", study_name="auto", metric=metric,
                      direction="minimize" if metric in LOWER_IS_BETTER else "maximize", sampler="tpe",
                      pruner="hyperband", trials=3 * 8, jobs=1, output=str(folder / WORK), seed=recipe.train.seed,
                      overrides=trial_overrides)
    spec.save()
    open_study(spec)
    session = AutoSession(folder=folder, recipe_file=recipe_file, source_recipe=str(Path(recipe_path).resolve()),
                          overrides=overrides, minutes=minutes, memory_gb=memory_gb, metric=metric, budget=budget,
                          facts=facts, space=space, spec=spec, clock=clock, plan=plan, trial_rows=trial_rows,
                          full_rows=full_rows, choices=choices)
    account_set_up(budget)
    session.save("searching")
    return session


def account_set_up(budget: Budget) -> None:
    """What the preparation took beyond the named phases (checking the recipe and data, reading the model's
    layers, opening the study): the "set-up" phase."""
    budget.phases["set-up"] = round(max(budget.elapsed() - sum(budget.phases.values()), 0.0), 2)


def resume_session(folder: Path, previous: dict[str, Any], recipe_path: str, overrides: list[str], budget: Budget,
                   log) -> AutoSession:
    """The session of an interrupted auto: same recipe, facts, plan and space; a fresh budget."""
    if previous.get("recipe") != str(Path(recipe_path).resolve()) or previous.get("overrides") != overrides:
        raise UserError(f"{folder}: holds the auto run of {previous.get('recipe')} with --set "
                        f"{previous.get('overrides')}; give the same recipe and --set to continue it, or another "
                        "--output")
    spec_file = folder / WORK / SPEC_FILE
    if not spec_file.is_file():
        raise UserError(f"{spec_file}: missing, so the study cannot be continued; choose another --output")
    spec = SearchSpec.load(spec_file)
    facts = DataFacts(**previous["data"])
    space_info = previous["space"]
    space = SearchSpace(methods=space_info["methods"], learning_rate=space_info["learning_rate"],
                        epochs=space_info["epochs"], num_layers=space_info["num_layers"],
                        linear_modules=tuple(space_info["linear_modules"]))
    clock = TrialClock(**{key: value for key, value in previous.get("clock", {}).items()})
    session = AutoSession(folder=folder, recipe_file=folder / WORK / "recipe.yaml", source_recipe=previous["recipe"],
                          overrides=overrides, minutes=budget.total_s / 60, memory_gb=previous.get("memory_gb"),
                          metric=previous["metric"], budget=budget, facts=facts, space=space, spec=spec, clock=clock,
                          plan=previous["plan"], trial_rows=previous["trial_rows"], full_rows=previous["full_rows"],
                          choices=previous.get("choices", {}), resumed=True, notes=list(previous.get("notes", [])))
    session.notes.append(f"continued at {datetime.now().isoformat(timespec='seconds')} after an interruption "
                         f"(previous status {previous.get('status')}); --minutes {session.minutes:g} counts from here")
    leftovers = [entry for entry in folder.iterdir() if entry.name not in (WORK, AUTO_JSON, AUTO_MD)]
    if leftovers:  # an interrupted finishing run: incomplete, it is trained again from the study's winner
        for entry in leftovers:
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        log(f"removed the interrupted finishing run's files ({', '.join(sorted(e.name for e in leftovers))}); "
            "it is trained again")
    account_set_up(budget)
    session.save("searching")
    return session


def plan_methods(recipe_file: Path, overrides: list[str], candidates: list[str], memory_gb: float | None,
                 budget: Budget, clock: TrialClock, rows: int, log) -> tuple[dict[str, Any], list[str]]:
    """Run ``plan`` when it is worth its time (or needed for ``--memory-gb``) and keep the methods that fit."""
    cost = PLAN_SECONDS_PER_METHOD * len(candidates)
    if memory_gb is None and cost > PLAN_SHARE * budget.total_s:
        reason = (f"not run: measuring {len(candidates)} method(s) takes ~{cost:.0f}s, more than "
                  f"{PLAN_SHARE:.0%} of the budget, and no --memory-gb asks for a memory check; the first trials "
                  "measure the time instead")
        log(f"plan {reason}")
        return {"ran": False, "reason": reason, "methods": {}}, list(candidates)
    plan = make_plan(str(recipe_file), overrides, memory_gb, None, None, methods=list(candidates), steps=2,
                     log=lambda message: log(f"plan: {message.strip()}"))
    kept, rows_out = methods_that_fit(plan, memory_gb, FINISH_SHARE * budget.left())
    for name, row in rows_out.items():
        if row.get("epoch_seconds"):
            clock.planned_epoch_s[name] = row["epoch_seconds"]
    if not kept:
        raise UserError(f"auto: no method fits --memory-gb {memory_gb}: "
                        + "; ".join(f"{name}: {row['why']}" for name, row in rows_out.items())
                        + ". Give more memory, a smaller model, or a smaller train.batch_size / data.max_length")
    return {"ran": True, "reason": f"measured {len(candidates)} method(s) on {rows} rows", "methods": rows_out}, kept


def methods_that_fit(plan, memory_gb: float | None, finish_seconds: float) -> tuple[list[str], dict[str, Any]]:
    """(methods kept, per method: peak GB, minutes per epoch, kept or not and why) from a ``plan``.

    A method fits when its peak memory is within ``memory_gb`` less the plan's headroom and one epoch on all
    rows fits in the time kept for the finish; when no method fits the time, the fastest that fits memory
    stays (its finish is cut by the time budget)."""
    rows: dict[str, Any] = {}
    fits_memory: list[str] = []
    for estimate in plan.methods:
        if estimate.error:
            rows[estimate.method] = {"fits": False, "why": f"could not be measured: {estimate.error}"}
            continue
        peak_gb = estimate.memory.peak() / 2**30
        row = {"peak_gb": round(peak_gb, 3), "epoch_seconds": round(estimate.epoch_seconds, 2)}
        if memory_gb is not None and peak_gb > memory_gb * (1 - HEADROOM):
            row.update(fits=False, why=f"needs {peak_gb:.2f} GB at peak, over --memory-gb {memory_gb:g} less "
                                       f"{HEADROOM:.0%} headroom")
        else:
            fits_memory.append(estimate.method)
            row.update(fits=True, why=f"{peak_gb:.2f} GB at peak" + (f" fits --memory-gb {memory_gb:g}"
                                                                     if memory_gb is not None else ""))
        rows[estimate.method] = row
    kept = [m for m in fits_memory if rows[m]["epoch_seconds"] <= finish_seconds]
    for method in fits_memory:
        if method not in kept:
            rows[method].update(fits=False, why=f"one epoch takes ~{rows[method]['epoch_seconds']:.0f}s, more than "
                                                f"the {finish_seconds:.0f}s kept for the finish")
    if not kept and fits_memory:
        fastest = min(fits_memory, key=lambda m: rows[m]["epoch_seconds"])
        rows[fastest].update(fits=True, why=rows[fastest]["why"] + "; the fastest method, kept although one epoch "
                                                                   "does not fit (its runs are cut by the time budget)")
        kept = [fastest]
    return kept, rows


def trial_data(job, recipe, folder: Path, rows: int) -> list[str]:
    """Write a stratified sample of the train split (and the validation split, so trials keep the same one) for
    the trials; the ``--set`` items that point trials at them."""
    data_dir = folder / WORK / "trial-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    frame = read_table(recipe.data.train)
    label = recipe.data.label_column
    sample = stratified_sample(frame, label, rows, recipe.train.seed)
    write_table(sample, data_dir / "train.jsonl")
    # without a validation file, trials carve their validation split from the sample, the finish from all rows
    return [f"data.train={data_dir / 'train.jsonl'}"]


def trial_validation(recipe, folder: Path) -> list[str]:
    """A stratified sample of the validation file for the trials; the ``--set`` item that points them at it."""
    data_dir = folder / WORK / "trial-data"
    data_dir.mkdir(parents=True, exist_ok=True)
    sample = stratified_sample(read_table(recipe.data.validation), recipe.data.label_column, MAX_TRIAL_VALIDATION,
                               recipe.train.seed)
    write_table(sample, data_dir / "validation.jsonl")
    return [f"data.validation={data_dir / 'validation.jsonl'}"]


def search(session: AutoSession, log) -> None:
    """Step 3: the budgeted study, ``auto.json`` updated after each trial."""
    session.choices["time"] = (f"{session.minutes:g} min in all; trials start only while one more and the finishing "
                               f"run fit: the finish keeps {FINISH_SHARE:.0%} of the budget, or what one epoch on "
                               "all rows and its fixed costs (loading, saving, test evaluation, report) need")

    def after_trial(study, frozen) -> None:
        state = frozen.state.name.lower()
        value = f"{frozen.value:.4f}" if frozen.value is not None else state
        log(f"trial {frozen.number}: {frozen.user_attrs.get('values', {})} -> {value} "
            f"({frozen.user_attrs.get('seconds', 0):.0f}s; {session.budget.left():.0f}s left)")
        session.save("searching", trials=[record.to_dict() for record in trial_records(study)])

    with session.budget.phase("search"):
        run_study(session.spec, session.space, session.budget, session.clock, lambda: finish_reserve(session),
                  log, on_trial=after_trial)


def finish_reserve(session: AutoSession) -> float:
    """Seconds kept for the finishing run: a share of the budget, or (when more) one epoch on every row (at most
    half the budget: longer epochs are cut by the time cap) and the finish's fixed costs."""
    total = session.budget.total_s
    scale = session.full_rows / max(session.trial_rows, 1)
    epoch = max((session.clock.epoch_seconds(m) or 0.0 for m in session.space.methods), default=0.0) * scale
    return max(FINISH_SHARE * total, min(epoch, 0.5 * total) + finish_fixed_seconds(session.clock))


def finish_fixed_seconds(clock: TrialClock) -> float:
    """What the finishing run takes beyond its epochs: loading, saving, the gate, test evaluation, the report."""
    overhead = clock.overhead_s if clock.overhead_s is not None else FIRST_GUESS_OVERHEAD_S  # before any trial
    return REPORT_SECONDS + FINISH_FIXED_FACTOR * overhead


def plan_finish(session: AutoSession) -> FinishPlan:
    """Step 4's recipe keys: the winner's values, its epochs sized to the time left, the time cap."""
    study = open_study(session.spec)
    winner = best_trial(study)
    reasons: dict[str, str] = {}
    if winner is not None:
        values = {k: v for k, v in winner.user_attrs.get("values", {}).items() if k != "train.time_budget_minutes"}
        described = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
        reasons["winner"] = (f"trial {winner.number} scored the best validation {session.metric} "
                             f"({winner.value:.4f}) of the {len(study.trials)} trial(s): {described}.")
        best_epoch = winner.user_attrs.get("best_epoch")
    else:
        method = session.space.methods[0]
        low, high = LEARNING_RATES[method]
        values = {"method.name": method}
        if session.space.learning_rate:
            values["train.learning_rate"] = round(math.sqrt(low * high), 7)
        reasons["winner"] = (f"no trial completed in the time, so the finish trains {method} at the middle of its "
                             "learning-rate range (a geometric mean).")
        best_epoch = None
    epochs = int(values.get("train.epochs", EPOCH_CHOICES[-1] if session.space.epochs else 0) or 0)
    if not session.space.epochs:
        epochs = int(validate_job(session.recipe_file, session.overrides).recipe.train.epochs)
    scale = session.full_rows / max(session.trial_rows, 1)
    if scale > 1:
        mode = (f"longer training: the winner's settings on all {session.full_rows} training rows (the trials saw "
                f"{session.trial_rows}); the validation split stays separate, to choose the epoch and judge the "
                "weight average")
    else:
        mode = ("longer training where the winner was still improving; the validation split stays separate, to "
                "choose the epoch and judge the weight average")
        if session.space.epochs and best_epoch == epochs and winner is not None:
            epochs += 1
            reasons["train.epochs"] = (f"the winner's best epoch was its last ({best_epoch}): the finish trains one "
                                       f"more ({epochs}).")
    train_s = max(session.budget.left() - finish_fixed_seconds(session.clock), 1.0)
    epoch_s = max((session.clock.epoch_seconds(values["method.name"]) or 0.0), 0.0) * scale
    if epoch_s > 0 and epochs * epoch_s > train_s:
        fitting = max(1, int(train_s // epoch_s))
        if fitting < epochs:
            reasons["train.epochs"] = (f"{epochs} epoch(s) of ~{epoch_s:.0f}s do not fit the {train_s:.0f}s left: "
                                       f"the finish trains {fitting}.")
            epochs = fitting
    reasons.setdefault("train.epochs", f"the winner's {epochs} epoch(s).")
    reasons["train.time_budget_minutes"] = (f"{train_s / 60:.2f} min: the time left less the finish's loading, "
                                            "saving, test evaluation and report; training stops there if slower "
                                            "than measured")
    values["train.epochs"] = epochs
    values["train.time_budget_minutes"] = round(train_s / 60, 4)
    overrides = [*session.overrides, *(override_item(key, value) for key, value in values.items())]
    return FinishPlan(overrides=overrides, epochs=epochs, train_minutes=round(train_s / 60, 3), mode=mode,
                      reasons=reasons)
