"""``auto.md`` and ``auto.json``: the data facts, the plan, the space, the trials, the time of each phase and one
sentence per choice saying why — written into the run folder beside the normal run's files."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tuneforge.apps.auto.finish import FinishPlan, SoupOutcome
from tuneforge.apps.auto.session import AUTO_MD, AutoSession
from tuneforge.apps.auto.study import trial_records
from tuneforge.apps.search.study import open_study


def read_run(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_up(session: AutoSession, finish: FinishPlan, soup: SoupOutcome, exit_code: int) -> dict[str, Any]:
    """Write ``auto.json`` (returned) and ``auto.md`` into the run folder."""
    run = read_run(session.folder)
    trials = [record.to_dict() for record in trial_records(open_study(session.spec))]
    status = "completed" if exit_code == 0 and str(run.get("status", "")).startswith("completed") else "failed"
    state = session.state(status, trials=trials, finish={
        **finish.to_dict(), "soup": soup.to_dict(), "run_status": run.get("status"),
        "validation": run.get("validation"), "test": run.get("test"), "exit_code": exit_code})
    state["total_s"] = round(session.budget.elapsed(), 2)
    state["within_budget"] = state["total_s"] <= 1.1 * session.budget.total_s
    session.save(status, **{k: v for k, v in state.items() if k not in session.state(status)})
    write_text_atomic(session.folder / AUTO_MD, markdown(state))
    return state


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` by rename: a reader never sees half a file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(state: dict[str, Any]) -> str:
    """auto.md from auto.json's content."""
    data, plan, finish = state["data"], state["plan"], state.get("finish") or {}
    lines = ["# tuneforge auto", "",
             f"Recipe `{state['recipe']}`, budget {state['minutes']:g} min, spent {state.get('total_s', 0) / 60:.2f} "
             f"min ({'within' if state.get('within_budget') else 'over'} the budget + 10%); metric validation "
             f"{state['metric']} ({state['direction']}). Status: **{state['status']}**.", ""]
    lines += ["## Data facts", "",
              f"- {data['rows']} training rows in `{data['train_file']}`; task **{data['task']}**"
              + (f", text pairs (`{data['text_column']}` + `{data['text_pair_column']}`)" if data["text_pair_column"]
                 else ""),
              f"- {len(data['label_counts'])} labels; largest / smallest class = {data['imbalance']:g}x; counts: "
              + ", ".join(f"{label} {count}" for label, count in list(data["label_counts"].items())[:12])
              + (" …" if len(data["label_counts"]) > 12 else ""),
              "- tokens per row (" + f"{data['rows_measured']} rows measured): "
              + ", ".join(f"{key} {value}" for key, value in data["length_percentiles"].items()),
              f"- `data.max_length` {data['max_length']} covers {data['max_length_coverage']:.1%} of them; class "
              f"weights: {data['class_weights']}", ""]
    lines += ["## Plan", "", f"`tuneforge plan` {plan['reason']}.", ""]
    if plan.get("methods"):
        lines += ["| method | peak GB | s / epoch (all rows) | kept | why |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {_number(row.get('peak_gb'))} | {_number(row.get('epoch_seconds'))} | "
                  f"{'yes' if row.get('fits') else 'no'} | {row.get('why', '')} |"
                  for name, row in plan["methods"].items()]
        lines.append("")
    lines += ["## Search space", "", "Optuna TPE sampler, Hyperband pruner (successive halving) on each epoch's "
              f"validation {state['metric']}; trials train on {state['trial_rows']} of {state['full_rows']} rows.", ""]
    lines += [f"- `{key}`: {value}" for key, value in state["space"]["searched"].items()]
    lines += ["", "## Trials", "", "| trial | state | settings | validation | epochs | seconds |",
              "| --- | --- | --- | --- | --- | --- |"]
    for trial in state.get("trials", []):
        settings = ", ".join(f"{key.split('.')[-1]}={_number(value)}" for key, value in trial["values"].items()
                             if key != "train.time_budget_minutes" and not isinstance(value, list))
        if isinstance(trial["values"].get("method.target_modules"), list):
            settings += ", target_modules=all linear"
        lines.append(f"| {trial['number']} | {trial['state']}{': ' + trial['note'] if trial['note'] else ''} | "
                     f"{settings} | {_number(trial['value'])} | {trial['epochs_run']} | {_number(trial['seconds'])} |")
    lines += ["", "## Finish", "", f"Mode: {finish.get('mode', 'not reached')}.", ""]
    lines += [f"- {key}: {why}" for key, why in finish.get("reasons", {}).items()]
    soup = finish.get("soup") or {}
    if soup:
        lines.append(f"- weight average (model soup): {soup.get('reason')}")
    validation, test = finish.get("validation") or {}, finish.get("test") or {}
    shown = ("accuracy", "f1_macro", "loss")
    lines += ["", "| split | " + " | ".join(shown) + " |", "| --- |" + " --- |" * len(shown),
              "| validation | " + " | ".join(_number(validation.get(k)) for k in shown) + " |"]
    if test:
        lines.append("| test | " + " | ".join(_number(test.get(k)) for k in shown) + " |")
    lines += ["", "## Time per phase", "", "| phase | seconds |", "| --- | --- |"]
    lines += [f"| {phase} | {seconds:.1f} |" for phase, seconds in state["phases_s"].items()]
    lines += [f"| total | {state.get('total_s', 0):.1f} |", "", "## Why each choice", ""]
    lines += [f"- **{key}**: {why}" for key, why in state["choices"].items()]
    if state.get("notes"):
        lines += ["", "## Notes", "", *(f"- {note}" for note in state["notes"])]
    return "\n".join(lines) + "\n"
