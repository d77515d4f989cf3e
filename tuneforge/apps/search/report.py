"""What a search leaves in its folder, rewritten from the study after every ``tuneforge search``:

- ``trials.csv`` / ``trials.md``: one row per trial (state, value, epochs run, parameters, seconds, run folder);
- ``best.yaml``: the best completed trial's recipe, fully resolved, ready for ``tuneforge train best.yaml``;
- ``importance.png`` / ``importance.json``: Optuna's parameter importances (fANOVA) and its matplotlib plot;
- ``search.md``: the summary that links them.

It reads the study only; it trains nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneforge.core.recipe import load_recipe
from tuneforge.apps.search.space import override_item
from tuneforge.apps.search.study import HEARTBEAT_GRACE_FACTOR, SearchSpec, open_study


@dataclass
class SearchSummary:
    """The state of a study after a search command."""

    folder: Path
    counts: dict[str, int]
    best_number: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] = field(default_factory=dict)
    importances: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)


def trial_rows(study, keys: list[str]) -> list[dict[str, Any]]:
    """One plain dict per trial, in trial order."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = (trial.datetime_complete - trial.datetime_start).total_seconds() \
            if trial.datetime_complete and trial.datetime_start else None
        row = {"trial": trial.number, "state": trial.state.name.lower(), "value": trial.value,
               "epochs": len(trial.intermediate_values)}
        row.update({key: trial.params.get(key) for key in keys})
        row.update({"seconds": round(seconds, 1) if seconds is not None else None,
                    "run_dir": trial.user_attrs.get("run_dir", ""), "error": _error(trial)})
        rows.append(row)
    return rows


def _error(trial) -> str:
    if trial.user_attrs.get("error"):
        return trial.user_attrs["error"]
    if trial.state.name == "FAIL":  # Optuna failed it for a stale heartbeat: its process was killed
        return "its worker stopped (killed?) mid-trial"
    return ""


def write_search_report(spec: SearchSpec) -> SearchSummary:
    """(Re)write every summary file of the search folder from the study."""
    import pandas as pd
    from optuna.trial import TrialState

    folder = Path(spec.output)
    study = open_study(spec)
    keys = list(spec.space)
    rows = trial_rows(study, keys)
    frame = pd.DataFrame(rows, columns=["trial", "state", "value", "epochs", *keys, "seconds", "run_dir", "error"])
    frame.to_csv(folder / "trials.csv", index=False)
    counts = {state: int((frame["state"] == state).sum()) for state in ("complete", "pruned", "fail", "running")}
    summary = SearchSummary(folder=folder, counts=counts)

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if completed:
        best = study.best_trial
        summary.best_number, summary.best_value, summary.best_params = best.number, best.value, dict(best.params)
        write_best_recipe(spec, best, folder / "best.yaml")
    else:
        summary.notes.append("no trial has completed yet, so there is no best.yaml")
    if counts["running"]:
        summary.notes.append(f"{counts['running']} trial(s) still marked running: other workers, or workers that "
                             f"were killed (Optuna marks those failed, and retries them once, when their heartbeat "
                             f"is older than {HEARTBEAT_GRACE_FACTOR * spec.heartbeat_s} s)")
    summary.importances = write_importance(study, folder, summary.notes)
    (folder / "trials.md").write_text(_markdown_table(frame), encoding="utf-8")
    (folder / "search.md").write_text(_summary_markdown(spec, summary, frame), encoding="utf-8")
    return summary


def write_best_recipe(spec: SearchSpec, best, path: Path) -> None:
    """The recipe the best trial trained with, every default filled in, with a comment saying where it came from."""
    overrides = [*spec.overrides, *(override_item(key, value) for key, value in best.params.items())]
    recipe = load_recipe(spec.recipe, overrides)
    header = (f"# Best trial {best.number} of study '{spec.study_name}' ({spec.storage}):\n"
              f"# validation {spec.metric} {best.value:.4f}. Searched keys: "
              f"{', '.join(f'{k}={v}' for k, v in best.params.items())}\n"
              f"# Train it with: tuneforge train {path}\n")
    body = yaml.safe_dump(recipe.to_yaml_dict(), sort_keys=False)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(header + body, encoding="utf-8")
    temporary.replace(path)


def write_importance(study, folder: Path, notes: list[str]) -> dict[str, float] | None:
    """Optuna's fANOVA importances and its matplotlib bar plot; None (with a note) when they cannot be computed."""
    import warnings

    import optuna
    from optuna.trial import TrialState

    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(completed) < 2:
        notes.append("parameter importances need at least 2 completed trials")
        return None
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from optuna.visualization.matplotlib import plot_param_importances

            axes = plot_param_importances(study, evaluator=evaluator)
            figure = axes.figure
            figure.set_size_inches(7, 1.2 + 0.45 * max(len(importances), 1))
            figure.tight_layout()
            figure.savefig(folder / "importance.png", dpi=110)
            plt.close(figure)
    except (RuntimeError, ValueError) as exc:  # e.g. every completed trial drew the same values
        notes.append(f"parameter importances not computed: {exc}")
        return None
    importances = {key: float(value) for key, value in importances.items()}
    (folder / "importance.json").write_text(json.dumps(importances, indent=2), encoding="utf-8")
    return importances


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def _markdown_table(frame) -> str:
    columns = [c for c in frame.columns if c != "error" or frame["error"].astype(bool).any()]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _summary_markdown(spec: SearchSpec, summary: SearchSummary, frame) -> str:
    counts = summary.counts
    lines = [f"# Search: study `{spec.study_name}`", "",
             f"- recipe: `{spec.recipe}`" + (f" with `{' '.join(spec.overrides)}`" if spec.overrides else ""),
             f"- storage: `{spec.storage}`; {spec.sampler} sampler, {spec.pruner} pruner; "
             f"{spec.direction} validation `{spec.metric}`",
             f"- trials: {len(frame)} ({counts['complete']} completed, {counts['pruned']} pruned, "
             f"{counts['fail']} failed, {counts['running']} running)", "",
             "## Space", "", *(f"- `{key}`: {value}" for key, value in spec.space.items()), ""]
    if summary.best_number is not None:
        lines += ["## Best", "", f"Trial {summary.best_number}: validation {spec.metric} {summary.best_value:.4f}",
                  "", *(f"- `{key}` = {_cell(value)}" for key, value in summary.best_params.items()), "",
                  "Ready-to-run recipe: [best.yaml](best.yaml) (`tuneforge train best.yaml`).", ""]
    if summary.importances:
        lines += ["## Parameter importance (fANOVA)", "", "![importance](importance.png)", "",
                  *(f"- `{key}`: {value:.3f}" for key, value in summary.importances.items()), ""]
    lines += ["## Trials", "", _markdown_table(frame)]
    if summary.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in summary.notes), ""]
    return "\n".join(lines)
