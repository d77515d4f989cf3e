"""``tuneforge compare``: several methods on the same recipe, data, seed and time budget, measured side by side.

Each method is trained by ``tuneforge train`` itself, in a child process, into ``<compare folder>/<method>/``.
Its peak memory is the child's own: the child writes its ``VmHWM`` (``/proc/self/status``, its resident
high-water mark) as it exits, as ``tuneforge plan``'s probe does. ``os.wait4``'s ``ru_maxrss`` would not do: it
carries the parent's size across the fork (a compare process holding 800 MB made a 14 MB child read 813 MB).
What differs between the runs is only ``method`` (the recipe's own method keeps its keys; the others run
with their defaults) and, unless ``--learning-rate recipe``, the learning rate: the recipe's for its own
method, each other method's ``default_learning_rate`` (docs/methods.md). With ``--budget-minutes`` every
run gets the same wall-clock budget (``train.time_budget_minutes``).

The table, the plot and the notes use the recipe's task's metrics: accuracy and macro-F1 for the
classification tasks; for the language-model tasks (``sft``, ``causal-lm``, ``masked-lm``) validation loss and
perplexity, test perplexity and, for sft, test ROUGE-L and exact match, compared by validation loss (lower is
better). Methods the task does not support (``Task.methods``) are refused before anything trains.

Writes ``compare.json`` (everything), ``compare.md`` (the table) and ``compare.png`` (the plot) into the
compare folder. This module does not train or evaluate anything itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.base.errors import UserError
from tuneforge.base.runfolder import is_completed, new_run_dir
from tuneforge.core.engine.validate import validate_job
from tuneforge.core.methods import method_names, method_spec
from tuneforge.core.recipe import load_recipe
from tuneforge.core.tasks import LanguageModelTask, Task, task_for

DEFAULT_METHODS = ("full", "freeze", "adapter", "lora", "prefix", "prompt")
# The child: ``python -m tuneforge`` with its arguments, which writes its own peak resident memory (KiB) to
# the file named by its first argument when it exits (on Linux; elsewhere there is no VmHWM and no figure).
MEASURED_CHILD = """
import atexit, runpy, sys
peak_file = sys.argv.pop(1)
def write_peak():
    try:
        with open('/proc/self/status') as status:
            peak = next(line.split()[1] for line in status if line.startswith('VmHWM:'))
        with open(peak_file, 'w') as out:
            out.write(peak)
    except (OSError, StopIteration):
        pass
atexit.register(write_peak)
sys.argv[0] = 'tuneforge'
runpy.run_module('tuneforge', run_name='__main__', alter_sys=True)
"""


@dataclass(frozen=True)
class Column:
    """One metric column of the table: ``split``'s (validation or test) ``key``."""

    header: str
    split: str
    key: str
    digits: int = 4


CLASSIFICATION_COLUMNS = (Column("val accuracy", "validation", "accuracy"), Column("val F1", "validation", "f1_macro"),
                          Column("test accuracy", "test", "accuracy"), Column("test F1", "test", "f1_macro"))
# Language models: token loss and perplexity; sft also scores its generated test answers (ROUGE-L, exact match).
LANGUAGE_MODEL_COLUMNS = (Column("val loss", "validation", "loss"),
                          Column("val perplexity", "validation", "perplexity", 2),
                          Column("test perplexity", "test", "perplexity", 2))
GENERATION_COLUMNS = (Column("test ROUGE-L", "test", "rouge_l"), Column("test exact match", "test", "exact_match"))


@dataclass
class MethodResult:
    """One method's run in a comparison."""

    method: str
    status: str
    run_dir: str
    learning_rate: float
    task: str = "classification"
    trainable_params: int | None = None
    total_params: int | None = None
    trainable_share: float | None = None
    peak_memory_mb: float | None = None
    train_seconds: float | None = None
    samples_per_s: float | None = None
    epochs_trained: float | None = None
    time_budget_reached: bool = False
    wall_seconds: float | None = None
    validation: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] = field(default_factory=dict)
    base_validation: dict[str, Any] = field(default_factory=dict)  # language models: the untrained model's
    error: str | None = None


def is_language_model(task: Task) -> bool:
    return isinstance(task, LanguageModelTask)


def parse_methods(text: str) -> list[str]:
    methods = [name.strip() for name in text.split(",") if name.strip()]
    if not methods:
        raise UserError("--methods: give at least one method, e.g. --methods full,lora")
    unknown = [name for name in methods if name not in method_names()]
    if unknown:
        raise UserError(f"--methods: unknown method(s) {', '.join(unknown)}; choose from {', '.join(method_names())}")
    if len(set(methods)) != len(methods):
        raise UserError("--methods: each method may appear once")
    return methods


def task_methods(task: Task, methods: list[str] | None) -> list[str]:
    """The methods to compare on ``task``: without a choice, those of :data:`DEFAULT_METHODS` the task supports;
    a chosen method the task does not support is refused, naming the supported ones."""
    if methods is None:
        return [name for name in DEFAULT_METHODS if task.methods is None or name in task.methods]
    unsupported = [name for name in methods if task.methods is not None and name not in task.methods]
    if unsupported:
        raise UserError(f"--methods: {', '.join(unsupported)} {'is' if len(unsupported) == 1 else 'are'} not "
                        f"supported for task {task.name}; choose from {', '.join(task.methods)}")
    return list(methods)


def method_overrides(recipe, method: str, learning_rates: str) -> tuple[list[str], float]:
    """The ``--set`` items that turn the recipe into this method's run, and the learning rate used."""
    overrides = []
    if method != recipe.method.name:
        overrides.append(f"method={{name: {method}}}")
    if learning_rates == "recipe" or method == recipe.method.name:
        rate = recipe.train.learning_rate
    else:
        rate = method_spec(method).default_learning_rate
    overrides.append(f"train.learning_rate={rate}")
    return overrides, rate


def compare(recipe_path: str, methods: list[str] | None, overrides: list[str], output: str | None,
            budget_minutes: float | None, learning_rates: str = "auto", log=print) -> tuple[Path, list[MethodResult]]:
    """Train every method (one child process each) and write the comparison; returns its folder and rows.
    ``methods``: None for the default list (the methods of :data:`DEFAULT_METHODS` the task supports)."""
    if learning_rates not in ("auto", "recipe"):
        raise UserError(f"--learning-rate must be auto or recipe (got {learning_rates!r})")
    task = task_for(load_recipe(recipe_path, overrides).task)
    methods = task_methods(task, methods)  # the task's methods, before anything slow
    job = validate_job(recipe_path, overrides)  # the data and model once, before anything slow
    recipe = job.recipe
    common = list(overrides)
    if budget_minutes is not None:
        if budget_minutes <= 0:
            raise UserError("--budget-minutes must be positive")
        common.append(f"train.time_budget_minutes={budget_minutes}")
    plans = {}
    for method in methods:  # every method's recipe must validate before the first one trains
        items, rate = method_overrides(recipe, method, learning_rates)
        task.check_recipe(load_recipe(recipe_path, common + items))  # e.g. sft packing with prompt tuning
        plans[method] = (items, rate)

    folder = new_run_dir(output, f"{recipe.name}-compare")
    logs = folder / "logs"
    logs.mkdir()
    log(f"compare folder: {folder}")
    results = []
    for index, method in enumerate(methods, 1):
        items, rate = plans[method]
        run_dir = folder / method
        log(f"[{index}/{len(methods)}] {method} (learning rate {rate:g}) -> {run_dir}")
        arguments = ["train", str(recipe_path), "--output", str(run_dir)]
        for item in common + items:
            arguments += ["--set", item]
        result = run_method(method, rate, arguments, run_dir, logs / f"{method}.log")
        result.task = recipe.task
        results.append(result)
        if result.status == "completed" and is_language_model(task):
            log(f"    {method}: validation loss {_fmt(result.validation.get('loss'))}, perplexity "
                f"{_fmt(result.validation.get('perplexity'), 2)}, test perplexity {_fmt(result.test.get('perplexity'), 2)}"
                f", {result.train_seconds:.0f}s training, peak memory {_fmt(result.peak_memory_mb, 0)} MB")
        elif result.status == "completed":
            log(f"    {method}: test accuracy {_fmt(result.test.get('accuracy'))}, validation accuracy "
                f"{_fmt(result.validation.get('accuracy'))}, {result.train_seconds:.0f}s training, peak memory "
                f"{_fmt(result.peak_memory_mb, 0)} MB")
        else:
            log(f"    {method}: {result.status}: {result.error} (log: {logs / f'{method}.log'})")
    write_comparison(folder, recipe, results, budget_minutes, learning_rates, len(job.data.train))
    return folder, results


def run_measured(arguments: list[str], log_path: Path) -> tuple[int, float | None]:
    """Run ``tuneforge ARGUMENTS`` in a child process (output to ``log_path``); return its exit code and its
    own peak resident memory in MB (None where the child could not read its VmHWM)."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    peak_file = log_path.with_suffix(".peak_kib")
    peak_file.unlink(missing_ok=True)
    with log_path.open("w", encoding="utf-8") as stream:
        process = subprocess.Popen([sys.executable, "-c", MEASURED_CHILD, str(peak_file), *arguments], stdout=stream,
                                   stderr=subprocess.STDOUT, env=env)
        try:
            code = process.wait()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
    try:
        peak = int(peak_file.read_text(encoding="utf-8")) / 1024
    except (OSError, ValueError):
        peak = None
    peak_file.unlink(missing_ok=True)
    return code, peak


def run_method(method: str, rate: float, arguments: list[str], run_dir: Path, log_path: Path) -> MethodResult:
    """Run one ``tuneforge train`` child (``arguments`` after ``tuneforge``); its peak memory is the child's own
    (:func:`run_measured`), its facts come from the run folder."""
    start = time.perf_counter()
    code, peak = run_measured(arguments, log_path)
    wall = time.perf_counter() - start
    result = MethodResult(method=method, status="failed", run_dir=str(run_dir), learning_rate=rate,
                          peak_memory_mb=peak, wall_seconds=wall)
    run_json = run_dir / "run.json"
    facts = json.loads(run_json.read_text(encoding="utf-8")) if run_json.is_file() else {}
    # a run that did not learn (status "completed: did not learn") is compared all the same: its numbers show it
    if code != 0 or not is_completed(facts.get("status")):
        lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        result.error = facts.get("error") or (lines[-1] if lines else f"exit code {code}")
        return result
    # the epoch records (a language model's epoch-0 record of the base model has no training time)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]
    epochs = [record for record in records if "train_seconds" in record]
    train_seconds = sum(record["train_seconds"] for record in epochs)
    samples = sum(record["samples_per_s"] * record["train_seconds"] for record in epochs)
    result.status = "completed"
    result.trainable_params = facts.get("trainable_params")
    result.total_params = facts.get("total_params")
    result.trainable_share = facts.get("trainable_share")
    result.train_seconds = train_seconds
    result.samples_per_s = samples / train_seconds if train_seconds else None
    # training rows: a language model's encoded rows (packed sft rows, text blocks), else the train split's rows
    rows = (facts.get("data") or {}).get("train", {}).get("rows") or facts.get("rows", {}).get("train")
    result.epochs_trained = round(samples / rows, 2) if rows else None
    result.time_budget_reached = any(record.get("time_budget_reached") for record in epochs)
    result.validation = {k: v for k, v in (facts.get("validation") or {}).items() if not isinstance(v, (dict, list))}
    result.test = {k: v for k, v in (facts.get("test") or {}).items() if not isinstance(v, (dict, list))}
    result.base_validation = dict(facts.get("base_validation") or {})
    return result


def _fmt(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k" if value >= 1e3 else str(value)


def metric_columns(results: list[MethodResult]) -> tuple[Column, ...]:
    """The metric columns of the rows' task: accuracy and F1, or a language model's loss and perplexity (and,
    when the runs scored generated answers (sft), ROUGE-L and exact match)."""
    task = task_for(results[0].task) if results else None
    if task is None or not is_language_model(task):
        return CLASSIFICATION_COLUMNS
    generated = [c for c in GENERATION_COLUMNS if c.key in task.summary_keys
                 and any(r.test.get(c.key) is not None for r in results if r.status == "completed")]
    return LANGUAGE_MODEL_COLUMNS + tuple(generated)


def table_markdown(results: list[MethodResult]) -> str:
    """The comparison as a Markdown table, one row per method, with the task's metric columns."""
    columns = metric_columns(results)
    header = ("| method | trainable params | trainable % | peak memory (MB) | train time (s) | samples/s | epochs | "
              + " | ".join(c.header for c in columns) + " | learning rate |")
    width = 8 + len(columns)
    lines = [header, "|" + "|".join([" --- "] * width) + "|"]
    for r in results:
        if r.status != "completed":
            lines.append(f"| {r.method} | {r.status}: {r.error} |" + " |" * (width - 1))
            continue
        epochs = f"{r.epochs_trained:g}" + (" (budget)" if r.time_budget_reached else "") if r.epochs_trained else "–"
        metrics = " | ".join(_fmt(getattr(r, c.split).get(c.key), c.digits) for c in columns)
        lines.append(
            f"| {r.method} | {_count(r.trainable_params)} | {100 * r.trainable_share:.2f} | {_fmt(r.peak_memory_mb, 0)} "
            f"| {r.train_seconds:.0f} | {_fmt(r.samples_per_s, 1)} | {epochs} "
            f"| {metrics} | {r.learning_rate:g} |")
    return "\n".join(lines)


def write_comparison(folder: Path, recipe, results: list[MethodResult], budget_minutes: float | None,
                     learning_rates: str, train_rows: int) -> None:
    """compare.json, compare.md and compare.png."""
    task = task_for(recipe.task)
    summary = {
        "recipe": recipe.name, "task": recipe.task, "main_metric": task.main_metric, "model": recipe.model,
        "train_rows": train_rows, "seed": recipe.train.seed,
        "epochs": recipe.train.epochs, "batch_size": recipe.train.batch_size, "max_length": recipe.data.max_length,
        "budget_minutes": budget_minutes, "learning_rates": learning_rates,
        "methods": [asdict(result) for result in results],
    }
    (folder / "compare.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    completed = [r for r in results if r.status == "completed"]
    if completed:
        plot_comparison(completed, folder / "compare.png", language_model=is_language_model(task))
    budget = f"{budget_minutes:g} min of training per method" if budget_minutes else "no time budget"
    lines = [
        f"# Method comparison: {recipe.name}",
        "",
        f"Model `{recipe.model}`, {train_rows} training rows, seed {recipe.train.seed}, up to {recipe.train.epochs} "
        f"epoch(s) of batch {recipe.train.batch_size} at max_length {recipe.data.max_length}; {budget}. "
        f"Learning rates: {'the recipe’s for every method' if learning_rates == 'recipe' else 'the recipe’s for its own method, each method’s default for the others (docs/methods.md)'}. "
        f"{validation_words(task)} "
        "Peak memory is the maximum resident memory of the method's `tuneforge train` process (CPU RAM; it "
        "includes Python, torch and the data). Train time and samples/s count the training epochs only.",
        "",
        table_markdown(results),
        "",
    ]
    notes = language_model_notes(results) if is_language_model(task) else comparison_notes(results)
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    if completed:
        lines += ["![comparison](compare.png)", ""]
    lines += ["Runs: " + ", ".join(f"[{r.method}]({r.method}/)" for r in results), ""]
    (folder / "compare.md").write_text("\n".join(lines), encoding="utf-8")


def validation_words(task: Task) -> str:
    if not is_language_model(task):
        return ("Validation metrics are those of the kept (best) epoch; test metrics are on the recipe's test file.")
    generated = (" ROUGE-L and exact match score the greedy answers to the test prompts against the references."
                 if "rouge_l" in task.summary_keys and task.name == "sft" else "")
    return ("Validation loss (mean token cross-entropy; lower is better) and perplexity (exp of the loss) are those "
            "of the kept epoch, the one of lowest validation loss; test perplexity is on the recipe's test file."
            + generated + " Methods are compared by validation loss.")


def language_model_notes(results: list[MethodResult]) -> list[str]:
    """Language models: the methods ranked by validation loss (lower is better), each adapting method's gap to
    full fine-tuning, the untrained model's loss, budget cuts and failures."""
    completed = [r for r in results if r.status == "completed" and r.validation.get("loss") is not None]
    notes = []
    if completed:
        ranked = sorted(completed, key=lambda r: r.validation["loss"])
        notes.append("by validation loss (lower is better): " + ", ".join(
            f"{r.method} {r.validation['loss']:.4f}" for r in ranked) + ".")
    by_name = {r.method: r for r in completed}
    full = by_name.get("full")
    for name in ("lora", "dora", "ia3", "adapter"):
        other = by_name.get(name)
        if full and other:
            gap = other.validation["loss"] - full.validation["loss"]
            notes.append(f"{name} validation loss is {abs(gap):.4f} {'above' if gap > 0 else 'below'} full "
                         f"fine-tuning's (perplexity {other.validation.get('perplexity', float('nan')):.2f} vs "
                         f"{full.validation.get('perplexity', float('nan')):.2f}) with "
                         f"{100 * other.trainable_share:.2f}% of the parameters trained.")
    base = next((r.base_validation for r in completed if r.base_validation.get("loss") is not None), None)
    if base:
        notes.append(f"the untrained model: validation loss {base['loss']:.4f}, perplexity "
                     f"{base.get('perplexity', float('nan')):.2f} (metrics.jsonl epoch 0 of each run).")
    return notes + outcome_notes(results)


def outcome_notes(results: list[MethodResult]) -> list[str]:
    """Whatever the task: the methods the time budget cut short, and those that failed."""
    notes = []
    cut = [r.method for r in results if r.time_budget_reached]
    if cut:
        notes.append(f"stopped by the time budget before their last epoch: {', '.join(cut)}.")
    failed = [f"{r.method} ({r.error})" for r in results if r.status != "completed"]
    if failed:
        notes.append(f"failed: {'; '.join(failed)}; see logs/.")
    return notes


def comparison_notes(results: list[MethodResult]) -> list[str]:
    by_name = {r.method: r for r in results if r.status == "completed"}
    notes = []
    full = by_name.get("full")
    for name in ("lora", "dora", "adapter"):
        other = by_name.get(name)
        if full and other and full.test.get("accuracy") is not None and other.test.get("accuracy") is not None:
            gap = 100 * (full.test["accuracy"] - other.test["accuracy"])
            notes.append(f"{name} test accuracy is {abs(gap):.1f} point(s) {'below' if gap > 0 else 'above'} full "
                         f"fine-tuning with {100 * other.trainable_share:.2f}% of the parameters trained.")
    return notes + outcome_notes(results)


def plot_comparison(results: list[MethodResult], path: Path, language_model: bool = False) -> None:
    """Four bar charts: accuracy (validation, test) — a language model's loss (validation, test) —, trainable
    share, peak memory, train time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r.method for r in results]
    x = np.arange(len(names))
    figure, axes = plt.subplots(2, 2, figsize=(max(8.0, 1.3 * len(names) + 4), 7))
    ax = axes[0, 0]
    key = "loss" if language_model else "accuracy"
    validation = [r.validation.get(key) or 0 for r in results]
    test = [r.test.get(key) or 0 for r in results]
    ax.bar(x - 0.2, validation, 0.4, label="validation")
    ax.bar(x + 0.2, test, 0.4, label="test")
    if language_model:
        ax.set_title("token loss (lower is better)")
        ax.legend(fontsize=8, loc="lower right")
    else:
        low = min(v for v in validation + test if v) if any(validation + test) else 0
        ax.set_ylim(max(0.0, low - 0.05), 1.0)
        ax.set_title("accuracy")
        ax.legend(fontsize=8)
    panels = [(axes[0, 1], [100 * (r.trainable_share or 0) for r in results], "trainable parameters (%, log)", True),
              (axes[1, 0], [r.peak_memory_mb or 0 for r in results], "peak memory (MB)", False),
              (axes[1, 1], [r.train_seconds or 0 for r in results], "train time (s)", False)]
    for ax, values, title, log_scale in panels:
        ax.bar(x, values, 0.6, color="tab:gray")
        ax.set_title(title)
        if log_scale:
            ax.set_yscale("log")
    for ax in axes.flat:
        ax.set_xticks(x, labels=names, rotation=30, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
