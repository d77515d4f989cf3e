"""One function per CLI command. Each takes plain arguments, prints for a person, returns an exit code
or raises UserError; :mod:`tuneforge.cli` only parses arguments and turns errors into one line."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import torch

from tuneforge import __version__
from tuneforge.apps.auto.budget import Budget
from tuneforge.apps.auto.finish import WeightAverage
from tuneforge.apps.auto.session import plan_finish, prepare_auto
from tuneforge.apps.auto.session import search as auto_search
from tuneforge.apps.auto.writeup import write_up
from tuneforge.apps.compare import compare, parse_methods, table_markdown
from tuneforge.apps.datatools.clean import clean_file
from tuneforge.apps.datatools.inspect import inspect_file, write_report
from tuneforge.apps.datatools.inspect import summary_lines as data_summary_lines
from tuneforge.apps.datatools.noise import find_noise
from tuneforge.apps.doctor.checks import run_doctor
from tuneforge.apps.explain import Explainer, explain_file, format_explanation
from tuneforge.apps.export.pipeline import export_run
from tuneforge.apps.export.pipeline import summary_lines as export_summary_lines
from tuneforge.apps.export.serve import Limits, serve
from tuneforge.apps.generate import generate_from_run
from tuneforge.apps.plan import format_plan, make_plan
from tuneforge.apps.report import write_run_report
from tuneforge.apps.runs import format_table, read_runs, sort_runs
from tuneforge.apps.ui.app import serve_ui
from tuneforge.apps.search.report import write_search_report
from tuneforge.apps.search.study import prepare_search, run_search
from tuneforge.base.errors import UserError, disk_full, disk_full_message
from tuneforge.base.faults import fault_point
from tuneforge.base.integrity import skip_verification  # noqa: F401 - cli/__init__ wraps commands in it
from tuneforge.base.manifest import start_manifest
from tuneforge.base.phases import PhaseClock, recording
from tuneforge.base.models import describe_aliases
from tuneforge.base.recipe import dump_recipe
from tuneforge.base.runfolder import DID_NOT_LEARN, RunStatus
from tuneforge.base.tables import write_table
from tuneforge.core.engine.checkpoint import (StopRequest, TrainingInterrupted, checkpoint_dirs, explain_out_of_memory,
                                              find_resumable, remove_checkpoints)
from tuneforge.core.engine.continual import forgetting_lines, prepare_continual
from tuneforge.core.engine.distributed import distributed
from tuneforge.core.engine.hooks import LoopHooks
from tuneforge.core.engine.loop import train
from tuneforge.core.engine.resume import check_resumable, create_run_dir, resume_facts
from tuneforge.core.engine.tracking import check_report_to
from tuneforge.core.engine.validate import validate_job
from tuneforge.core.methods import method_names, method_spec
from tuneforge.core.recipe import load_recipe, load_run_recipe
from tuneforge.core.tasks import task_for


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def validate_command(recipe_path: str, overrides: list[str]) -> int:
    """``tuneforge validate RECIPE``: the recipe and its data checked in full (no weights loaded), summarised."""
    job = validate_job(recipe_path, overrides)
    data = job.data
    what = f"{len(data.label_names)} labels" if data.label_names else f"task {job.recipe.task}"
    print(f"{recipe_path}: valid. {what}; train {len(data.train)}, validation {len(data.validation)}, "
          f"test {len(data.test) if data.test else 0} rows; model {job.recipe.model} "
          f"({job.model_config.model_type}); method {job.recipe.method.name}")
    for note in data.notes:
        print(f"  note: {note}")
    return 0


# `tuneforge train` exit status of a run whose final model did not learn, with train.fail_if_not_learning: true.
EXIT_DID_NOT_LEARN = 3


def train_command(recipe_path: str | None, overrides: list[str], output: str | None, resume: str | None = None,
                  allow_pickle: bool = False, from_run: str | None = None, run_folder: Path | None = None,
                  hooks: LoopHooks | None = None) -> int:
    """``tuneforge train``. ``run_folder``: a folder already created to train into (``tuneforge auto``: it holds
    the search beside the run); ``hooks``: an extension's loop hooks (auto: the weight average)."""

    dist = distributed()  # several processes under `accelerate launch`; rank 0 alone writes the run folder
    phases = PhaseClock()  # run.json "phases": where the command's time went (docs/speed.md)
    if resume is not None:
        recipe_path = str(check_resumable(resume, recipe_path, overrides, output))
    elif recipe_path is None:
        raise UserError("train: give a RECIPE.yaml, or --resume RUN_DIR to continue an interrupted run")
    if from_run is not None:  # continual fine-tuning: recorded in config.yaml, so --resume and reruns keep it
        if resume is not None:
            raise UserError("train: --from starts a new run from a finished one; --resume continues the same run "
                            "(it keeps its --from); give one of them")
        overrides = [*overrides, f"continual.from_run={from_run}"]
    job = validate_job(recipe_path, overrides)
    recipe, data = job.recipe, job.data
    task = task_for(recipe.task)
    continual = prepare_continual(recipe, data, log)  # --from: the previous run's labels first, its rows to replay
    if continual is not None:
        data = continual.data
    check_report_to(recipe.train.report_to)
    for note in data.notes:
        log(f"note: {note}")
    checkpoint, skipped = None, []
    if resume is not None:
        run_dir = Path(resume)
        checkpoint, skipped = find_resumable(run_dir, log=log, allow_pickle=allow_pickle)
    else:
        run_dir = run_folder if run_folder is not None else create_run_dir(dist, output, recipe.name)
    hooks = continual if continual is not None else hooks
    if not dist.is_main:  # the other processes of a distributed launch only train
        with StopRequest(log).installed() as stop:
            train(recipe, data, run_dir, log=lambda message: None, resume_from=checkpoint, stop=stop, hooks=hooks)
        return 0
    log(f"run folder: {run_dir}")
    if resume is None:
        dump_recipe(recipe, run_dir / "config.yaml")
        if data.label_names:  # a language model has none
            (run_dir / "labels.json").write_text(json.dumps(data.label_names, indent=1, ensure_ascii=False),
                                                 encoding="utf-8")
    status = RunStatus(run_dir, name=recipe.name, task=recipe.task, model=recipe.model, method=recipe.method.name,
                       tuneforge_version=__version__, rows={"train": len(data.train), "validation": len(data.validation),
                                                            "test": len(data.test) if data.test else 0},
                       processes=dist.world_size, **resume_facts(run_dir, checkpoint, skipped))
    status.update(data=task.data_summary(data))
    if continual is not None:
        status.update(continual=continual.facts())
    start_manifest(run_dir, recipe, recipe_path, overrides, resume=status.data if checkpoint is not None else None)
    try:
        phases.lap("setup")  # recipe, data reading and checks, run folder
        with StopRequest(log).installed() as stop, recording(phases):
            result = train(recipe, data, run_dir, log=log, resume_from=checkpoint, stop=stop,
                           on_facts=lambda facts: status.update(**facts), remove_checkpoints=False, hooks=hooks)
        status.update(trainable_params=result.trainable_params, total_params=result.total_params,
                      trainable_share=result.trainable_params / result.total_params, best_epoch=result.best_epoch,
                      stopped_early=result.stopped_early, precision=result.runtime.precision_name,
                      validation={k: v for k, v in result.best_metrics.items()}, **result.facts)
        summary = {"validation": result.best_metrics}
        fault_point("after-training")  # TUNEFORGE_FAULT: the reliability tests' kill -9 (docs/reliability.md)
        # [task] evaluate data.test into eval/test (multilabel first tunes its thresholds; sft also generates)
        with phases.timed("test_evaluation"):
            summary.update(task.after_training(recipe, data, result, run_dir, log))
        if "calibration" in summary:  # train.calibrate: the temperature and the ECE before/after (calibration.json)
            status.update(calibration=summary.pop("calibration"))
        if "test" in summary:
            status.update(test={k: v for k, v in summary["test"].items() if k not in ("per_class", "thresholds")})
        forgetting = continual.measure_forgetting(result.model, result.tokenizer, result.runtime.device, run_dir,
                                                  summary.get("test"), log) if continual is not None else None
        if forgetting is not None:
            status.update(forgetting={k: forgetting[k] for k in ("before", "after", "drop")})
    except TrainingInterrupted as interrupted:
        status.finish("interrupted", checkpoint=str(interrupted.checkpoint) if interrupted.checkpoint else None)
        if interrupted.checkpoint:
            print(f"interrupted: saved {interrupted.checkpoint}\nresume with: tuneforge train --resume {run_dir}")
        else:
            print("interrupted: no checkpoint was written (train.keep_checkpoints is 0)")
        return 130
    except KeyboardInterrupt:
        status.finish("interrupted")
        raise
    except BaseException as exc:
        try:
            status.finish("failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
            write_report_quietly(run_dir)
        except OSError:
            pass  # a full disk may refuse run.json too; the error below is the one to report
        if isinstance(exc, torch.cuda.OutOfMemoryError):
            raise explain_out_of_memory(exc) from None
        if disk_full(exc):  # the last intact checkpoint is still there: say how to go on from it
            raise UserError(f"{run_dir}: " + disk_full_message(
                exc, f"continue from the last intact checkpoint with: tuneforge train --resume {run_dir}"
                if checkpoint_dirs(run_dir) else "start the run again (no checkpoint had been written yet)")) from None
        raise
    learning = result.facts.get("learning") or {}  # the learning guard's verdict on the final model
    learned = learning.get("learned", True)
    status.finish("completed" if learned else DID_NOT_LEARN)
    remove_checkpoints(run_dir, log)  # only now: a run killed before this point can still be resumed
    with phases.timed("report"):
        write_report_quietly(run_dir)
    status.update(phases=phases.as_dict())
    print(f"\nrun {run_dir} finished in {status.data['minutes']:.1f} min")
    print("\n".join(task.summary_lines(summary, result.facts)))  # [task] its headline metrics
    for line in forgetting_lines(forgetting):
        print(line)
    if not learned:
        print(f"WARNING: {learning['line']}\n  likely fixes: " + "; ".join(learning.get("likely_fixes", [])))
        if recipe.train.fail_if_not_learning:
            print(f"exit {EXIT_DID_NOT_LEARN}: train.fail_if_not_learning is true")
            return EXIT_DID_NOT_LEARN
    return 0


def write_report_quietly(run_dir: Path) -> None:
    """Write report.html; a failure here is logged, never turns a finished run into a failed one."""
    try:
        path = write_run_report(run_dir)
        log(f"report: {path}")
    except Exception as exc:  # noqa: BLE001 - the run itself is complete and saved
        log(f"warning: could not write {run_dir / 'report.html'} ({type(exc).__name__}: {exc}); "
            f"run `tuneforge report {run_dir}` to retry")


def eval_command(run_dir: str, data_file: str, backend: str = "torch") -> int:
    """``tuneforge eval RUN_DIR FILE``: the run's model on a labelled file, into ``RUN_DIR/eval/<file stem>/``."""
    task = load_run_recipe(Path(run_dir)).task if Path(run_dir).is_dir() else "classification"
    # [task] each task evaluates its own way; --backend onnx only where the task runs its ONNX export
    return task_for(task).eval_command(run_dir, data_file, **backend_argument(task, backend))


def predict_command(run_dir: str, text: str | None, text_pair: str | None, input_file: str | None,
                    output_file: str | None, top: int, backend: str = "torch") -> int:
    """``tuneforge predict RUN_DIR``: one text (``--text``) or a file (``--input``/``--output``)."""
    if (text is None) == (input_file is None):
        raise UserError("predict: give either --text \"...\" or --input FILE --output FILE")
    if input_file is not None and output_file is None:
        raise UserError("predict: --input needs --output FILE (CSV, TSV, JSON, JSONL or Parquet)")
    if output_file is not None and Path(output_file).exists():
        raise UserError(f"{output_file}: already exists; predict never overwrites a file, choose another --output")
    task = load_run_recipe(Path(run_dir)).task if Path(run_dir).is_dir() else "classification"
    return task_for(task).predict_command(run_dir, text, text_pair, input_file, output_file, top,  # [task]
                                          **backend_argument(task, backend))


def backend_argument(task: str, backend: str) -> dict[str, str]:
    """``--backend`` for a task's predict/eval: nothing for the default (every task runs PyTorch), else the
    keyword argument, or "not supported yet" for a task that does not list the backend."""
    if backend == "torch":
        return {}
    if backend not in task_for(task).inference_backends:
        raise UserError(f"--backend {backend}: not supported yet for task {task} runs; use --backend torch")
    return {"backend": backend}


def explain_command(run_dir: str, text: str | None, text_pair: str | None, label: str | None,
                    input_file: str | None, output_file: str | None, steps: int) -> int:
    """``tuneforge explain RUN_DIR``: integrated-gradients token attributions of one text or of a file's rows."""
    if (text is None) == (input_file is None):
        raise UserError("explain: give either --text \"...\" or --input FILE --output FILE.jsonl|FILE.html")
    if input_file is not None and output_file is None:
        raise UserError("explain: --input needs --output FILE.jsonl or FILE.html")
    explainer = Explainer(run_dir, steps=steps)
    if text is not None:
        print(format_explanation(explainer.explain(text, text_pair, label)))
        return 0
    explanations = explain_file(explainer, input_file, output_file, label)
    worst = max((e.completeness_error for e in explanations), default=0.0)
    print(f"wrote {len(explanations)} explanations to {output_file} (integrated gradients, {steps} steps; largest "
          f"completeness error {worst:.2%})")
    return 0


def models_command() -> int:

    print("Model aliases (use as `model:`; a local folder or a hub id also works):")
    for alias, where, description in describe_aliases():
        print(f"  {alias:<14} {description}\n  {'':<14} -> {where}")
    print("\nMethods (`method.name`):")
    for name in method_names():
        print(f"  {name:<14} {method_spec(name).summary}")
    return 0


# ----------------------------------------------------------------------------- data and report commands


def data_inspect_command(file: str, text_column: str | None, text_pair_column: str | None, label_column: str | None,
                         against: str | None, recipe_path: str | None, model: str | None, max_length: int | None,
                         output: str | None) -> int:
    defaults = {"text_column": "text", "text_pair_column": None, "label_column": "label", "model": "minilm",
                "max_length": 128}
    if recipe_path is not None:
        recipe = load_recipe(recipe_path)
        defaults = {"text_column": recipe.data.text_column, "text_pair_column": recipe.data.text_pair_column,
                    "label_column": recipe.data.label_column, "model": recipe.model,
                    "max_length": recipe.data.max_length}
    model = model if model is not None else defaults["model"]
    report = inspect_file(file, text_column or defaults["text_column"], label_column or defaults["label_column"],
                          text_pair_column or defaults["text_pair_column"], against,
                          None if model == "none" else model, max_length or defaults["max_length"])
    print("\n".join(data_summary_lines(report)))
    if output is not None:
        json_path, html_path = write_report(report, output)
        print(f"wrote {json_path} and {html_path}")
    return 0


def data_clean_command(file: str, output: str, text_column: str, text_pair_column: str | None, label_column: str,
                       dedupe: str | None, resolve_conflicts: str | None, drop_empty: bool, log_file: str | None) -> int:
    result = clean_file(file, output, text_column, label_column, text_pair_column, dedupe, resolve_conflicts,
                        drop_empty, log_file)
    counts = result.counts
    print(f"{file}: {result.rows_in:,} rows -> {result.output}: {result.rows_out:,} rows "
          f"({result.removed} removed, {result.relabelled} relabelled)")
    print(f"  empty {counts['empty']}, conflicts relabelled {counts['conflict_relabelled']}, conflicts dropped "
          f"{counts['conflict_dropped']}, duplicates {counts['duplicate']}")
    if counts["duplicate_kept_other_label"]:
        print(f"  note: {counts['duplicate_kept_other_label']} copies were kept because their label differs from an "
              "earlier copy's; add --resolve-conflicts majority|drop to settle them")
    print(f"  log of every change: {result.log}")
    return 0


def data_noise_command(recipe_path: str, overrides: list[str], folds: int, output: str | None, top: int) -> int:

    recipe = load_recipe(recipe_path, overrides)
    target = Path(output) if output else Path(f"{recipe.name}.label_issues.csv")
    if target.exists():
        raise UserError(f"{target}: already exists; the noise finder never overwrites a file, choose another --output")
    result = find_noise(recipe, folds, log=log)
    write_table(result.issues, target)
    share = len(result.issues) / max(result.rows, 1)
    print(f"{recipe.data.train}: {len(result.issues)} of {result.rows:,} rows ({share:.1%}) look mislabelled "
          f"(out-of-fold accuracy of the frozen-body head {result.out_of_fold_accuracy:.4f}, {result.folds} folds; "
          f"features {result.seconds_features:.0f}s, folds {result.seconds_folds:.1f}s)")
    for record in result.issues.head(top).itertuples(index=False):
        text = " ".join(str(record.text).split())
        print(f"  row {record.row}: {record.label} -> {record.suggested_label} "
              f"(p {record.label_probability:.3f} vs {record.suggested_probability:.3f}): "
              f"{text[:70] + ('…' if len(text) > 70 else '')}")
    print(f"wrote {target} (ranked, most likely errors first)")
    return 0


def report_command(run_dir: str) -> int:
    path = write_run_report(run_dir)
    print(f"wrote {path}")
    return 0


def export_command(run_dir: str, fmt: str, quantize: str | None, output: str | None, data_file: str | None,
                   min_agreement: float | None, measure: bool) -> int:
    out, report = export_run(run_dir, fmt, quantize, output, data_file=data_file, min_agreement=min_agreement,
                             measure=measure, log=log)
    print("\n".join(export_summary_lines(out, report)))
    return 0


def serve_command(path: str, host: str, port: int, max_texts: int, max_text_chars: int, max_batch: int,
                  threads: int | None = None) -> int:
    serve(path, host, port, Limits(max_texts=max_texts, max_text_chars=max_text_chars, max_batch=max_batch),
          threads=threads, log=log)
    return 0


def compare_command(recipe_path: str, methods: str | None, overrides: list[str], output: str | None,
                    budget_minutes: float | None, learning_rates: str) -> int:
    """``tuneforge compare RECIPE``: train each method under one budget; print and write the comparison."""
    folder, results = compare(recipe_path, parse_methods(methods) if methods else None, overrides, output,
                              budget_minutes,
                              learning_rates, log=log)
    print(table_markdown(results))
    print(f"\nwrote {folder / 'compare.md'}, compare.json, compare.png")
    return 0 if all(r.status == "completed" for r in results) else 1


def plan_command(recipe_path: str, overrides: list[str], memory_gb: float | None, minutes: float | None,
                 gpu: str | None, methods: str | None, json_output: str | None) -> int:

    plan = make_plan(recipe_path, overrides, memory_gb, minutes, gpu,
                     methods=parse_methods(methods) if methods else None, log=log)
    print(format_plan(plan))
    if json_output:
        Path(json_output).write_text(json.dumps(plan.to_dict(), indent=2, default=str), encoding="utf-8")
        print(f"\nwrote {json_output}")
    return 0


def search_command(recipe_path: str, space_path: str, trials: int, storage: str | None, jobs: int, pruner: str,
                   sampler: str, metric: str | None, study_name: str | None, output: str | None,
                   overrides: list[str], heartbeat_s: int = 20) -> int:

    spec = prepare_search(recipe_path, space_path, trials, storage, jobs, pruner, sampler, metric, study_name,
                          output, overrides, log=log, heartbeat_s=heartbeat_s)
    log(f"search folder: {spec.output}")
    try:
        run_search(spec, log=log)
    finally:  # a killed or failed search still leaves an up-to-date table of what it finished
        summary = write_search_report(spec)
    counts = summary.counts
    print(f"\nstudy '{spec.study_name}': {sum(counts.values())} trials ({counts['complete']} completed, "
          f"{counts['pruned']} pruned, {counts['fail']} failed, {counts['running']} running)")
    if summary.best_number is not None:
        params = ", ".join(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
                           for key, value in summary.best_params.items())
        print(f"  best: trial {summary.best_number}, validation {spec.metric} {summary.best_value:.4f} ({params})")
        print(f"  wrote {spec.output}/best.yaml, trials.csv, trials.md, search.md"
              + (", importance.png" if summary.importances else ""))
    for note in summary.notes:
        print(f"  note: {note}")
    return 0


def auto_command(recipe_path: str, overrides: list[str], minutes: float, memory_gb: float | None,
                 metric: str | None, output: str | None, started: float | None = None) -> int:
    """``tuneforge auto``: data facts, plan, budgeted search, then the winner trained by ``train`` into the folder.
    ``started``: the ``perf_counter()`` the budget counts from (default now)."""
    budget = Budget(minutes, started)
    session = prepare_auto(recipe_path, overrides, minutes, memory_gb, metric, output, budget, log)
    auto_search(session, log)
    finish = plan_finish(session)
    session.save("finishing")
    soup = WeightAverage(session.metric)
    log(f"finish: {finish.mode}; {finish.epochs} epoch(s), at most {finish.train_minutes:.2f} min of training")
    code = 1
    try:
        with budget.phase("finish"):
            code = train_command(str(session.recipe_file), finish.overrides, None, run_folder=session.folder,
                                 hooks=soup)
    finally:
        with budget.phase("write-up"):
            state = write_up(session, finish, soup.outcome, code)
    print(f"auto: {len(state['trials'])} trial(s), {state['total_s'] / 60:.2f} of {minutes:g} min; "
          f"wrote {session.folder / 'auto.md'} and auto.json")
    return code


def generate_command(run_dir: str, prompt: str | None, input_file: str | None, output_file: str | None,
                     max_new_tokens: int | None, temperature: float, top_p: float | None) -> int:
    return generate_from_run(run_dir, prompt, input_file, output_file, max_new_tokens, temperature, top_p, log)


def doctor_command(recipe_path: str | None, overrides: list[str], output: str | None, steps: int,
                   json_output: str | None) -> int:
    if steps < 1:
        raise UserError(f"doctor: --steps must be at least 1, got {steps}")
    report = run_doctor(recipe_path, overrides, output, steps=steps, log=print)
    failures, warnings = report.failures, report.warnings
    print(f"\n{'FAILED' if failures else 'passed'}: {len(failures)} failure(s), {len(warnings)} warning(s)")
    if json_output:
        from dataclasses import asdict

        Path(json_output).write_text(json.dumps({"checks": [asdict(c) for c in report.checks],
                                                 "measurements": report.measurements}, indent=2, default=str),
                                     encoding="utf-8")
        print(f"wrote {json_output}")
    return 1 if failures else 0


def runs_command(folder: str, sort: str, descending: bool, as_json: bool) -> int:
    rows = sort_runs(read_runs(folder), sort, descending)
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"{folder}: no run folders (none has a run.json)")
    else:
        print(format_table(rows))
    return 0


def ui_command(folder: str, recipe_dirs: list[str], host: str, port: int) -> int:
    """``tuneforge ui``: the web dashboard over FOLDER until Ctrl-C."""
    serve_ui(folder, recipe_dirs, host, port, log=log)
    return 0
