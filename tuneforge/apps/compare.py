"""``tuneforge compare``: several methods on the same recipe, data, seed and time budget, measured side by side.

Each method is trained by ``tuneforge train`` itself, in a child process (so its peak memory is its own:
the child's maximum resident set size, read with ``os.wait4``), into ``<compare folder>/<method>/``.
What differs between the runs is only ``method`` (the recipe's own method keeps its keys; the others run
with their defaults) and, unless ``--learning-rate recipe``, the learning rate: the recipe's for its own
method, each other method's ``default_learning_rate`` (docs/methods.md). With ``--budget-minutes`` every
run gets the same wall-clock budget (``train.time_budget_minutes``).

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

DEFAULT_METHODS = ("full", "freeze", "adapter", "lora", "prefix", "prompt")


@dataclass
class MethodResult:
    """One method's run in a comparison."""

    method: str
    status: str
    run_dir: str
    learning_rate: float
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
    error: str | None = None


def parse_methods(text: str) -> list[str]:
    from tuneforge.core.methods import method_names

    methods = [name.strip() for name in text.split(",") if name.strip()]
    if not methods:
        raise UserError("--methods: give at least one method, e.g. --methods full,lora")
    unknown = [name for name in methods if name not in method_names()]
    if unknown:
        raise UserError(f"--methods: unknown method(s) {', '.join(unknown)}; choose from {', '.join(method_names())}")
    if len(set(methods)) != len(methods):
        raise UserError("--methods: each method may appear once")
    return methods


def method_overrides(recipe, method: str, learning_rates: str) -> tuple[list[str], float]:
    """The ``--set`` items that turn the recipe into this method's run, and the learning rate used."""
    from tuneforge.core.methods import method_spec

    overrides = []
    if method != recipe.method.name:
        overrides.append(f"method={{name: {method}}}")
    if learning_rates == "recipe" or method == recipe.method.name:
        rate = recipe.train.learning_rate
    else:
        rate = method_spec(method).default_learning_rate
    overrides.append(f"train.learning_rate={rate}")
    return overrides, rate


def compare(recipe_path: str, methods: list[str], overrides: list[str], output: str | None,
            budget_minutes: float | None, learning_rates: str = "auto", log=print) -> tuple[Path, list[MethodResult]]:
    """Train every method (one child process each) and write the comparison; returns its folder and rows."""
    from tuneforge.core.recipe import load_recipe
    from tuneforge.base.runfolder import new_run_dir
    from tuneforge.core.engine.validate import validate_job

    if learning_rates not in ("auto", "recipe"):
        raise UserError(f"--learning-rate must be auto or recipe (got {learning_rates!r})")
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
        load_recipe(recipe_path, common + items)
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
        arguments = [sys.executable, "-m", "tuneforge", "train", str(recipe_path), "--output", str(run_dir)]
        for item in common + items:
            arguments += ["--set", item]
        result = run_method(method, rate, arguments, run_dir, logs / f"{method}.log")
        results.append(result)
        if result.status == "completed":
            log(f"    {method}: test accuracy {_fmt(result.test.get('accuracy'))}, validation accuracy "
                f"{_fmt(result.validation.get('accuracy'))}, {result.train_seconds:.0f}s training, peak memory "
                f"{result.peak_memory_mb:.0f} MB")
        else:
            log(f"    {method}: {result.status}: {result.error} (log: {logs / f'{method}.log'})")
    write_comparison(folder, recipe, results, budget_minutes, learning_rates, len(job.data.train))
    return folder, results


def run_method(method: str, rate: float, arguments: list[str], run_dir: Path, log_path: Path) -> MethodResult:
    """Run one ``tuneforge train`` child; read its peak memory from the kernel and its facts from the run."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    start = time.perf_counter()
    with log_path.open("w", encoding="utf-8") as stream:
        process = subprocess.Popen(arguments, stdout=stream, stderr=subprocess.STDOUT, env=env)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    result = MethodResult(method=method, status="failed", run_dir=str(run_dir), learning_rate=rate,
                          peak_memory_mb=usage.ru_maxrss / 1024, wall_seconds=wall)  # ru_maxrss is in KiB on Linux
    run_json = run_dir / "run.json"
    facts = json.loads(run_json.read_text(encoding="utf-8")) if run_json.is_file() else {}
    if process.returncode != 0 or facts.get("status") != "completed":
        lines = [line for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        result.error = facts.get("error") or (lines[-1] if lines else f"exit code {process.returncode}")
        return result
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
              if '"validation_accuracy"' in line]
    train_seconds = sum(record["train_seconds"] for record in epochs)
    samples = sum(record["samples_per_s"] * record["train_seconds"] for record in epochs)
    result.status = "completed"
    result.trainable_params = facts.get("trainable_params")
    result.total_params = facts.get("total_params")
    result.trainable_share = facts.get("trainable_share")
    result.train_seconds = train_seconds
    result.samples_per_s = samples / train_seconds if train_seconds else None
    result.epochs_trained = round(samples / facts["rows"]["train"], 2) if facts.get("rows", {}).get("train") else None
    result.time_budget_reached = any(record.get("time_budget_reached") for record in epochs)
    result.validation = {k: v for k, v in (facts.get("validation") or {}).items() if not isinstance(v, (dict, list))}
    result.test = {k: v for k, v in (facts.get("test") or {}).items() if not isinstance(v, (dict, list))}
    return result


def _fmt(value, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _count(value: int | None) -> str:
    if value is None:
        return "–"
    return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.1f}k" if value >= 1e3 else str(value)


def table_markdown(results: list[MethodResult]) -> str:
    """The comparison as a Markdown table, one row per method."""
    header = ("| method | trainable params | trainable % | peak memory (MB) | train time (s) | samples/s | epochs "
              "| val accuracy | val F1 | test accuracy | test F1 | learning rate |")
    lines = [header, "|" + "|".join([" --- "] * 12) + "|"]
    for r in results:
        if r.status != "completed":
            lines.append(f"| {r.method} | {r.status}: {r.error} |" + " |" * 11)
            continue
        epochs = f"{r.epochs_trained:g}" + (" (budget)" if r.time_budget_reached else "") if r.epochs_trained else "–"
        lines.append(
            f"| {r.method} | {_count(r.trainable_params)} | {100 * r.trainable_share:.2f} | {r.peak_memory_mb:.0f} "
            f"| {r.train_seconds:.0f} | {_fmt(r.samples_per_s, 1)} | {epochs} "
            f"| {_fmt(r.validation.get('accuracy'))} | {_fmt(r.validation.get('f1_macro'))} "
            f"| {_fmt(r.test.get('accuracy'))} | {_fmt(r.test.get('f1_macro'))} | {r.learning_rate:g} |")
    return "\n".join(lines)


def write_comparison(folder: Path, recipe, results: list[MethodResult], budget_minutes: float | None,
                     learning_rates: str, train_rows: int) -> None:
    """compare.json, compare.md and compare.png."""
    summary = {
        "recipe": recipe.name, "model": recipe.model, "train_rows": train_rows, "seed": recipe.train.seed,
        "epochs": recipe.train.epochs, "batch_size": recipe.train.batch_size, "max_length": recipe.data.max_length,
        "budget_minutes": budget_minutes, "learning_rates": learning_rates,
        "methods": [asdict(result) for result in results],
    }
    (folder / "compare.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    completed = [r for r in results if r.status == "completed"]
    if completed:
        plot_comparison(completed, folder / "compare.png")
    budget = f"{budget_minutes:g} min of training per method" if budget_minutes else "no time budget"
    lines = [
        f"# Method comparison: {recipe.name}",
        "",
        f"Model `{recipe.model}`, {train_rows} training rows, seed {recipe.train.seed}, up to {recipe.train.epochs} "
        f"epoch(s) of batch {recipe.train.batch_size} at max_length {recipe.data.max_length}; {budget}. "
        f"Learning rates: {'the recipe’s for every method' if learning_rates == 'recipe' else 'the recipe’s for its own method, each method’s default for the others (docs/methods.md)'}. "
        "Validation metrics are those of the kept (best) epoch; test metrics are on the recipe's test file. "
        "Peak memory is the maximum resident memory of the method's `tuneforge train` process (CPU RAM; it "
        "includes Python, torch and the data). Train time and samples/s count the training epochs only.",
        "",
        table_markdown(results),
        "",
    ]
    notes = comparison_notes(results)
    if notes:
        lines += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    if completed:
        lines += ["![comparison](compare.png)", ""]
    lines += ["Runs: " + ", ".join(f"[{r.method}]({r.method}/)" for r in results), ""]
    (folder / "compare.md").write_text("\n".join(lines), encoding="utf-8")


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
    cut = [r.method for r in results if r.time_budget_reached]
    if cut:
        notes.append(f"stopped by the time budget before their last epoch: {', '.join(cut)}.")
    failed = [f"{r.method} ({r.error})" for r in results if r.status != "completed"]
    if failed:
        notes.append(f"failed: {'; '.join(failed)}; see logs/.")
    return notes


def plot_comparison(results: list[MethodResult], path: Path) -> None:
    """Four bar charts: accuracy (validation, test), trainable share, peak memory, train time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = [r.method for r in results]
    x = np.arange(len(names))
    figure, axes = plt.subplots(2, 2, figsize=(max(8.0, 1.3 * len(names) + 4), 7))
    ax = axes[0, 0]
    validation = [r.validation.get("accuracy") or 0 for r in results]
    test = [r.test.get("accuracy") or 0 for r in results]
    ax.bar(x - 0.2, validation, 0.4, label="validation")
    ax.bar(x + 0.2, test, 0.4, label="test")
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
