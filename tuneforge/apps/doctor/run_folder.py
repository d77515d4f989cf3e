"""``tuneforge doctor RUN_DIR``: can this run folder's model still be trusted?

Any run that saved a model (classification, multilabel, images, sft, causal-lm, masked-lm) holds
``artifacts.json`` (:mod:`tuneforge.base.integrity`): the sha256 and size of every file under ``model/``,
``adapter/`` and ``base/`` at the moment its saved model was read back from disk and matched the trained
one, and the same for each export into ``RUN/export/``. The doctor reads that record and re-hashes the files:
a file changed or lost since (a corrupted copy, a half-finished upload, an edited config) fails, with the
file named. It reads only; nothing is loaded or written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.base.integrity import ARTIFACTS_NAME, EXPORT_RECORDS, RUN_FOLDERS, compare_files
from tuneforge.base.runfolder import DID_NOT_LEARN
FILES_SHOWN = 5


def is_run_folder(path: str | Path) -> bool:
    """Whether the doctor should check ``path`` as a run folder: any folder (a recipe is a file)."""
    return Path(path).is_dir()


def check_run_folder(report, run_dir: Path, log) -> None:
    """The run's status, its integrity record and every recorded file against its sha256, into ``report``."""
    run_dir = Path(run_dir)
    if not (run_dir / "run.json").is_file() and not (run_dir / ARTIFACTS_NAME).is_file():
        report.add("fail", "run", f"{run_dir} is not a run folder (it has neither run.json nor {ARTIFACTS_NAME})",
                   "pass a run folder (as written by tuneforge train) or a recipe file", log=log)
        return
    check_status(report, run_dir, log)
    record_file = run_dir / ARTIFACTS_NAME
    if not record_file.is_file():
        report.add("fail", "artifacts", f"{record_file} is missing: this run's saved model was never read back "
                   "and checked (the run stopped before saving, or was trained by a tuneforge without the gate)",
                   "train the recipe again (its config.yaml) to get a checked model", log=log)
        return
    try:
        artifacts = json.loads(record_file.read_text(encoding="utf-8"))["artifacts"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        report.add("fail", "artifacts", f"{record_file} cannot be read ({type(error).__name__}: {error})",
                   "the record is damaged; train the recipe again", log=log)
        return
    report.measurements["artifacts"] = {}
    for key, entry in artifacts.items():
        if key == "run":
            check_entry(report, "saved model", entry, run_dir, log)
        elif key.startswith("export:"):
            name = key.split(":", 1)[1]
            folder = Path(name) if Path(name).is_absolute() else run_dir / "export" / name
            check_entry(report, f"export {name}", entry, folder, log)
    if "run" not in artifacts:
        report.add("fail", "saved model", f"{record_file} has no entry for the run's saved model",
                   "train the recipe again", log=log)


def check_status(report, run_dir: Path, log) -> None:
    path = run_dir / "run.json"
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        report.add("fail", "run", f"{path} cannot be read ({type(error).__name__})", "is this a run folder?", log=log)
        return
    state = status.get("status")
    summary = (f"{state}: task {status.get('task')}, model {status.get('model')}, method {status.get('method')}"
               + (f", {status['minutes']:.1f} min" if isinstance(status.get("minutes"), (int, float)) else ""))
    report.measurements["run"] = {key: status.get(key) for key in ("status", "task", "model", "method")}
    if state == "completed":
        report.add("ok", "run", summary, log=log)
    elif state == DID_NOT_LEARN:  # tuneforge.core.evaluate.learning_guard judged the final model
        learning = status.get("learning") or {}
        report.add("fail", "run", f"{summary}; {learning.get('line', 'no better than a model that learned nothing')}",
                   "; ".join(learning.get("likely_fixes") or ["see docs/tasks.md (the learning guard)"]), log=log)
    elif state == "failed":
        report.add("fail", "run", f"{summary}; error: {status.get('error', 'not recorded')}",
                   "see run.json; fix the cause and train again", log=log)
    else:
        report.add("warn", "run", f"{summary} (not completed)", "its model may be missing or from an earlier epoch",
                   log=log)


def check_entry(report, name: str, entry: dict[str, Any], folder: Path, log) -> None:
    """One ``artifacts.json`` entry: did its read-back check pass, and are its files still the ones checked?"""
    probe = entry.get("probe", {})
    if not entry.get("passed"):
        problems = "; ".join(probe.get("problems", [])) or "no reason recorded"
        rescue = f"; the in-memory weights were kept in {entry['rescue']}" if entry.get("rescue") else ""
        report.add("fail", name, f"failed its integrity check when it was written: {problems}{rescue}",
                   "do not use this model; train again (or export again)", log=log)
    else:
        difference = probe.get("max_abs_logit_diff")
        detail = (f"read back with {probe.get('reloaded_with') or 'its loader'} and matched the model in memory: "
                  f"max |Δlogit| {difference:.2g} on {probe.get('n_examples')} probe rows" if difference is not None
                  else f"read back and matched the model in memory on {probe.get('n_examples')} probe rows")
        report.add("ok", name, detail + (f" ({probe['compared']})" if probe.get("compared") else "") +
                   f", checked {entry.get('checked', '?')}", log=log)
    check_files(report, name, entry.get("files", []), folder, log,
                scope=RUN_FOLDERS if entry.get("kind") == "run" else None)


def check_files(report, name: str, recorded: list[dict[str, Any]], folder: Path, log,
                scope: tuple[str, ...] | None) -> None:
    """Re-hash every recorded file under ``folder``; ``scope``: the sub-folders whose unrecorded files are
    reported too (None: all of ``folder``)."""
    if not folder.is_dir():
        if scope is None:  # an export removed since: the run's own model is not affected
            report.add("info", f"{name} files", f"{folder} is gone; not checked", log=log)
        else:
            report.add("fail", f"{name} files", f"{folder} is missing ({len(recorded)} files were recorded)",
                       "the model was moved or deleted; train again", log=log)
        return
    found = compare_files(recorded, folder, scope, ignore=EXPORT_RECORDS if scope is None else ())
    expected, missing, changed, added = found.expected, found.missing, found.changed, found.added
    report.measurements.setdefault("artifacts", {})[name] = {"files": len(expected), "missing": missing,
                                                            "changed": changed, "unrecorded": added}
    if missing or changed:
        parts = ([f"changed since checked: {shown(changed)}"] if changed else []) + (
            [f"missing: {shown(missing)}"] if missing else [])
        report.add("fail", f"{name} files", f"{len(changed) + len(missing)} of {len(expected)} recorded files differ "
                   f"from artifacts.json ({'; '.join(parts)})",
                   "this copy is damaged: restore the folder from a good copy, or train (export) again", log=log)
    else:
        size = sum(record["bytes"] for record in expected.values())
        report.add("ok", f"{name} files", f"all {len(expected)} recorded files ({size / 2**20:.1f} MiB) match "
                   "their sha256", log=log)
    if added:
        report.add("warn", f"{name} files", f"{len(added)} files were added after the check: {shown(added)}",
                   "they were not part of the checked model; remove them unless you added them on purpose", log=log)


def shown(paths: list[str]) -> str:
    """The first few paths, and how many more."""
    more = len(paths) - FILES_SHOWN
    return ", ".join(paths[:FILES_SHOWN]) + (f" and {more} more" if more > 0 else "")
