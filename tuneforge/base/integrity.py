"""Integrity gates: every model tuneforge writes is read back from disk, as a user would read it, and
checked against the model that was in memory before anything is called done.

This module owns the comparison and its record, ``artifacts.json``; it does not decide how a method saves
or loads (that is :mod:`tuneforge.core.methods`) nor how an export is written (:mod:`tuneforge.apps.export`). Two
callers:

- after every save (and merge) both training loops (:mod:`tuneforge.core.engine.loop` for classification,
  :mod:`tuneforge.core.engine.generative` for sft / causal-lm / masked-lm) call :func:`save_and_gate`: the method
  saves, the saved module is compared with the trained one (``save_check.json``), then the run folder is
  read back as a user reads it (``Method.load``: ``from_pretrained`` of ``model/``, or base + adapter; for a
  language model, as ``tuneforge generate`` loads it) and its logits on a fixed probe batch of validation
  rows (a language model: the token logits of a few encoded validation examples) are compared with the
  in-memory model's (:func:`gate_saved_run`);
- after every export, :mod:`tuneforge.apps.export.pipeline` calls :func:`gate_export` with the reloaded export
  (an ONNX Runtime session, a TorchScript module or ``from_pretrained``) and labelled validation rows.

A gate fails (an :class:`IntegrityError`, exit 1) when the reloaded artifact's logits differ beyond the
tolerance of its kind, when its predictions collapse to one class while the in-memory model's did not, or
when its validation accuracy drops by more than ``export.max_metric_drop``. After a failed save gate, the
in-memory weights are written to ``RUN/rescue/`` and the message says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from contextlib import contextmanager
from datetime import datetime
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tuneforge.base.errors import UserError
from tuneforge.base.atomic import write_json_atomic
from tuneforge.base.faults import fault_point
from tuneforge.base.phases import add_phase

ARTIFACTS_NAME = "artifacts.json"
RESCUE_DIR = "rescue"
# A model saved in fp32 and read back is the same model: anything beyond float noise is a lost weight.
SAVE_TOLERANCE = 1e-4
# A language model's logits (tens of thousands per token, through many layers: SmolLM2 has 30 and 49,152
# tokens) gather more float noise in a merge than a classifier's few: a merged LoRA of SmolLM2 read back
# differed by 1.2e-4. A lost or wrongly scaled weight moves logits by whole units, far above this.
LANGUAGE_MODEL_TOLERANCE = 1e-3
SAVE_CHECK_NAME = "save_check.json"
# An fp32 ONNX/TorchScript graph reorders float operations (fused kernels), so allow a little more.
EXPORT_FP32_TOLERANCE = 1e-3
DEFAULT_MAX_METRIC_DROP = 0.01
# Tensors named in a failure message (those that differ most between memory and disk).
TENSORS_SHOWN = 5


class IntegrityError(UserError):
    """A saved, merged or exported model does not answer as the in-memory model did."""


# ----------------------------------------------------------------------------- comparison


def compare_predictions(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None,
                        tolerance: float | None, max_metric_drop: float) -> dict[str, Any]:
    """Compare two ``[rows, classes]`` logit arrays of the same probe rows; ``labels`` (optional) gives the
    accuracy of both. ``tolerance`` None: logits are not expected to match (INT8), only predictions.

    Returns the measurements and ``problems``: one sentence per failed check (empty = passed).
    """
    reference = np.asarray(reference, dtype=np.float64)
    candidate = np.asarray(candidate, dtype=np.float64)
    problems: list[str] = []
    if reference.shape != candidate.shape:
        return {"n_examples": int(reference.shape[0]), "passed": False,
                "problems": [f"logits have shape {tuple(candidate.shape)} after reloading, {tuple(reference.shape)} "
                             "in memory (a different number of labels: the classification head was not restored)"]}
    finite = bool(np.isfinite(candidate).all())
    difference = np.abs(reference - candidate)
    max_difference = float(difference.max()) if finite and difference.size else float("inf")
    reference_predictions, candidate_predictions = reference.argmax(axis=1), candidate.argmax(axis=1)
    agreement = float((reference_predictions == candidate_predictions).mean()) if len(reference) else 0.0
    reference_classes = sorted({int(c) for c in reference_predictions})
    candidate_classes = sorted({int(c) for c in candidate_predictions})
    result: dict[str, Any] = {
        "n_examples": int(len(reference)),
        "max_abs_logit_diff": max_difference,
        "tolerance": tolerance,
        "agreement": agreement,
        "classes_predicted": {"in_memory": len(reference_classes), "reloaded": len(candidate_classes)},
    }
    if not finite:
        problems.append("the reloaded model returns NaN or infinite logits")
    elif tolerance is not None and max_difference > tolerance:
        problems.append(f"max |Δlogit| {max_difference:.3g} > tolerance {tolerance:g} "
                        f"(predictions agree on {agreement:.1%} of {len(reference)} probe rows)")
    collapsed = len(candidate_classes) == 1 and len(reference_classes) > 1
    result["collapsed_to_one_class"] = collapsed
    if collapsed:
        problems.append(f"predictions collapse to one class (label index {candidate_classes[0]}) on all "
                        f"{len(reference)} probe rows, where the in-memory model predicts {len(reference_classes)} "
                        "classes")
    # Accuracy of the argmax needs one label id per row; multi-label rows (multi-hot) skip this check. A
    # negative label (-100) marks a row without one: a language model's prompt or last token position.
    scored = np.asarray(labels) >= 0 if labels is not None and np.asarray(labels).ndim == 1 else None
    if scored is not None and scored.any():
        labels = np.asarray(labels)[scored]
        before = float((reference_predictions[scored] == labels).mean())
        after = float((candidate_predictions[scored] == labels).mean())
        result.update(metric="accuracy", in_memory_accuracy=before, reloaded_accuracy=after,
                      metric_drop=before - after, max_metric_drop=max_metric_drop)
        if before - after > max_metric_drop + 1e-12:
            problems.append(f"validation accuracy drops from {before:.4f} to {after:.4f} ({100 * (before - after):.2f} "
                            f"points > export.max_metric_drop {100 * max_metric_drop:.2f} points)")
    result["passed"] = not problems
    result["problems"] = problems
    return result


def differing_tensors(in_memory: nn.Module, reloaded: nn.Module, top: int = TENSORS_SHOWN) -> list[str]:
    """Names of the weights that differ between two modules (missing ones first, then largest |Δ|): the
    part of a failure message that says *what* was lost."""
    saved = dict(reloaded.state_dict())
    found: list[tuple[float, str]] = []
    for name, value in in_memory.state_dict().items():
        other = saved.get(name)
        if other is None:
            found.append((float("inf"), f"{name} (not in the reloaded model)"))
        elif other.shape != value.shape:
            found.append((float("inf"), f"{name} (shape {tuple(other.shape)} vs {tuple(value.shape)})"))
        elif value.is_floating_point():
            delta = float((value.detach().float().cpu() - other.detach().float().cpu()).abs().max()) if value.numel() else 0.0
            if delta > SAVE_TOLERANCE:
                found.append((delta, f"{name} (max |Δ| {delta:.3g})"))
    found.sort(key=lambda item: -item[0])
    return [label for _, label in found[:top]]


# ----------------------------------------------------------------------------- the record


def file_records(folder: Path) -> list[dict[str, Any]]:
    """sha256 and size of every file under ``folder`` (paths relative to it), sorted."""
    records = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        records.append({"path": str(path.relative_to(folder)), "bytes": path.stat().st_size,
                        "sha256": digest.hexdigest()})
    return records


@dataclass
class FileComparison:
    """Recorded files (``artifacts.json``) against those on disk now, by relative path."""

    expected: dict[str, dict[str, Any]]
    changed: list[str]
    missing: list[str]
    added: list[str]


def compare_files(recorded: list[dict[str, Any]], folder: Path, scope: tuple[str, ...] | None,
                  ignore: tuple[str, ...] = ()) -> FileComparison:
    """Re-hash the files under ``folder`` and compare them with ``recorded`` (``artifacts.json`` file records).

    ``scope``: the sub-folders of ``folder`` whose files count (their paths are recorded with the
    sub-folder in front, as a run's ``model/...``); None: every file of ``folder``. ``ignore``: paths that
    are records rewritten after the check (an export's ``artifacts.json`` and ``export_report.json``)."""
    if scope is None:
        present = {record["path"]: record for record in file_records(folder) if record["path"] not in ignore}
    else:
        present = {f"{sub}/{record['path']}": record for sub in scope if (folder / sub).is_dir()
                   for record in file_records(folder / sub)}
    expected = {record["path"]: record for record in recorded if record["path"] not in ignore}
    return FileComparison(
        expected=expected,
        changed=[path for path, record in expected.items()
                 if path in present and present[path]["sha256"] != record["sha256"]],
        missing=[path for path in expected if path not in present],
        added=[path for path in present if path not in expected])


def record_artifact(record_file: Path, key: str, entry: dict[str, Any]) -> None:
    """Add (or replace) one artifact's entry in ``artifacts.json``, atomically."""
    data = json.loads(record_file.read_text(encoding="utf-8")) if record_file.is_file() else {"artifacts": {}}
    data.setdefault("artifacts", {})[key] = {"checked": datetime.now().isoformat(timespec="seconds"), **entry}
    write_json_atomic(record_file, data)


def parameter_counts(model: nn.Module) -> dict[str, int]:
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "total": sum(p.numel() for p in model.parameters())}


# ----------------------------------------------------------------------------- the save / merge gate


def logits_of(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """What a classifier is compared on: its ``[rows, labels]`` logits for the probe batch, in fp32."""
    return model(**batch).logits.float()


@dataclass
class SavedRun:
    """What :func:`save_and_gate` hands back: the module standing for the saved model (the merged one for a
    merging method), the run read back from disk and its ``artifacts.json`` entry."""

    saved: nn.Module
    reloaded: nn.Module
    entry: dict[str, Any]


def save_and_gate(method, model: nn.Module, tokenizer, run_dir: Path, batch: dict[str, torch.Tensor],
                  labels: np.ndarray | None, *, outputs: Callable[[nn.Module, dict], torch.Tensor] = logits_of,
                  reload: Callable[[], nn.Module] | None = None, reloaded_with: str | None = None,
                  after_save: Callable[[], None] | None = None, tolerance: float = SAVE_TOLERANCE,
                  max_metric_drop: float = DEFAULT_MAX_METRIC_DROP, compared: str | None = None) -> SavedRun:
    """Save ``model`` through ``method`` (and the tokenizer into ``model/``), then check twice on ``batch``:

    1. the module ``Method.save`` returned (the merged model for a merging method) answers as the trained
       one did (``save_check.json``; a merge that changes the outputs fails here);
    2. the integrity gate (:func:`gate_saved_run`): the run read back from disk does too (``artifacts.json``).

    ``outputs(model, batch)`` gives the ``[rows, classes]`` logits compared (default: a classifier's logits;
    a language model passes its token logits, one row per token position) and ``labels`` one label per
    row (negative: none) for the accuracy check. ``reload`` reads the run back (default: the method's
    ``load``, as ``tuneforge predict`` does); ``after_save`` runs between saving and the checks (it may add
    files to ``model/``); ``compared`` says in words what a probe row is (recorded when given). Raises
    :class:`IntegrityError` when either check fails.
    """
    run_dir = Path(run_dir)
    started = time.perf_counter()  # run.json "phases": the writing is "saving", the checks "integrity_check"
    with torch.no_grad():
        before = outputs(model, batch)
    parameters = parameter_counts(model)  # before saving: a merge removes the adapter's parameters
    saving = time.perf_counter()
    saved = method.save(model, run_dir)
    fault_point("model-save")  # TUNEFORGE_FAULT: the reliability tests' kill -9 (docs/reliability.md)
    tokenizer.save_pretrained(run_dir / "model")
    if after_save is not None:
        after_save()
    saving = time.perf_counter() - saving
    add_phase("saving", saving)
    with torch.no_grad():
        after = outputs(saved, batch)
    difference = float((before - after).abs().max()) if before.shape == after.shape else float("inf")
    check = {"probe_examples": int(before.shape[0]), "max_abs_logit_difference": difference,
             "tolerance": tolerance, "passed": difference <= tolerance}
    write_json_atomic(run_dir / SAVE_CHECK_NAME, check)
    if not check["passed"]:
        kept = (f"; the unmerged adapter is kept in {run_dir / 'adapter'}" if (run_dir / "adapter").is_dir() else "")
        raise IntegrityError(f"the saved (merged) model's logits differ from the trained model's by {difference:.2e} "
                             f"(> {tolerance}){kept}; see {run_dir / SAVE_CHECK_NAME}")
    entry, reloaded = check_saved_run(method, model, saved, parameters, run_dir, batch, labels, before,
                                      max_metric_drop, outputs=outputs, reload=reload, reloaded_with=reloaded_with,
                                      tolerance=tolerance, compared=compared)
    add_phase("integrity_check", time.perf_counter() - started - saving)
    return SavedRun(saved=saved, reloaded=reloaded, entry=entry)


def gate_saved_run(method, trained: nn.Module, saved: nn.Module, parameters: dict[str, int], run_dir: Path,
                   batch: dict[str, torch.Tensor], labels: np.ndarray | None, reference_logits: torch.Tensor,
                   max_metric_drop: float = DEFAULT_MAX_METRIC_DROP) -> dict[str, Any]:
    """Reload the run the way ``tuneforge predict`` does (the method's ``load``) and compare it on ``batch``
    with ``reference_logits`` (the trained model's, taken before saving). Records ``artifacts.json``;
    raises :class:`IntegrityError` after writing ``RUN/rescue/`` when the check fails.

    ``trained``: the module the loop trained; ``saved``: what ``Method.save`` returned (the merged model
    for a merging method); ``parameters``: trainable/total counts taken before saving (a merge removes the
    adapter's parameters).
    """
    entry, _ = check_saved_run(method, trained, saved, parameters, run_dir, batch, labels, reference_logits,
                               max_metric_drop)
    return entry


def check_saved_run(method, trained: nn.Module, saved: nn.Module, parameters: dict[str, int], run_dir: Path,
                    batch: dict[str, torch.Tensor], labels: np.ndarray | None, reference_logits: torch.Tensor,
                    max_metric_drop: float = DEFAULT_MAX_METRIC_DROP, *,
                    outputs: Callable[[nn.Module, dict], torch.Tensor] = logits_of,
                    reload: Callable[[], nn.Module] | None = None, reloaded_with: str | None = None,
                    tolerance: float = SAVE_TOLERANCE, compared: str | None = None) -> tuple[dict[str, Any], nn.Module]:
    """:func:`gate_saved_run` with its parts open: how the run is read back (``reload``, described by
    ``reloaded_with``), what is compared (``outputs``) and how closely (``tolerance``). Returns the
    ``artifacts.json`` entry and the reloaded model."""
    run_dir = Path(run_dir)
    device = reference_logits.device
    if reload is None:
        reload = lambda: type(method).load(run_dir, method.config)  # noqa: E731 - the default reader
        reloaded_with = f"{type(method).__name__}.load (as tuneforge predict and eval load it)"
    try:
        reloaded = reload().to(device).eval()
    except Exception as exc:  # noqa: BLE001 - any failure to read back is the finding
        reloaded, load_error = None, f"{type(exc).__name__}: {exc}"
    else:
        load_error = None
    if reloaded is not None:
        with torch.no_grad():
            logits = outputs(reloaded, batch)
        probe = compare_predictions(reference_logits.cpu().numpy(), logits.cpu().numpy(), labels, tolerance,
                                    max_metric_drop)
    else:
        probe = {"n_examples": int(reference_logits.shape[0]), "passed": False,
                 "problems": [f"the saved run cannot be loaded back ({load_error})"]}
    probe["reloaded_with"] = reloaded_with
    if compared is not None:
        probe["compared"] = compared
    folders = [name for name in ("model", "adapter", "base") if (run_dir / name).is_dir()]
    entry = {
        "kind": "run",
        "method": method.config.name,
        "passed": probe["passed"],
        "parameters": parameters,
        "probe": probe,
        "files": [{**record, "path": f"{folder}/{record['path']}"} for folder in folders
                  for record in file_records(run_dir / folder)],
    }
    if not probe["passed"]:
        in_memory = in_memory_counterpart(trained, saved, reloaded)
        changed = differing_tensors(in_memory, reloaded) if reloaded is not None else []
        rescue = write_rescue(in_memory, run_dir)
        entry["differing_tensors"] = changed
        entry["rescue"] = str(rescue)
        record_artifact(run_dir / ARTIFACTS_NAME, "run", entry)
        raise IntegrityError(
            f"{run_dir}: the saved model does not answer as the trained model did: {'; '.join(probe['problems'])}"
            + (f". Weights that differ after reloading: {', '.join(changed)}" if changed else "")
            + f". The in-memory weights are kept in {rescue} (a safetensors state_dict of "
              f"{type(in_memory).__name__}; load with model.load_state_dict(safetensors.torch.load_file(...))); "
              f"details in {run_dir / ARTIFACTS_NAME}. Do not use this run's saved model")
    record_artifact(run_dir / ARTIFACTS_NAME, "run", entry)
    return entry, reloaded


def in_memory_counterpart(trained: nn.Module, saved: nn.Module, reloaded: nn.Module | None) -> nn.Module:
    """The in-memory module whose weight names match the reloaded model's: the merged model for a merging
    method (the trained PEFT wrapper has other names), else the trained module itself."""
    if reloaded is None or saved is trained:
        return trained
    names = set(reloaded.state_dict())
    overlap = {id(m): len(names & set(m.state_dict())) for m in (trained, saved)}
    return saved if overlap[id(saved)] > overlap[id(trained)] else trained


def write_rescue(model: nn.Module, run_dir: Path) -> Path:
    """Write ``model``'s full state_dict (what was in memory) to ``RUN/rescue/``; return the file."""
    from safetensors.torch import save_file

    folder = run_dir / RESCUE_DIR
    folder.mkdir(parents=True, exist_ok=True)
    state, seen = {}, set()
    for name, value in model.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        pointer = value.untyped_storage().data_ptr()
        state[name] = value.clone() if pointer in seen else value  # safetensors refuses shared storage
        seen.add(pointer)
    path = folder / "in_memory_state.safetensors"
    save_file(state, str(path), metadata={"format": "pt", "class": type(model).__name__})
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "save_pretrained"):
        config.save_pretrained(folder)
    return path


# ----------------------------------------------------------------------------- the export gate


def gate_export(reference, candidate, texts: list[str], pairs: list[str] | None, labels: np.ndarray | None,
                export_dir: Path, quantized: bool, max_metric_drop: float, run_dir: Path | None = None,
                key: str | None = None) -> dict[str, Any]:
    """Compare an export reloaded from disk (``candidate``, a :class:`~tuneforge.apps.export.runtime.TextClassifier`)
    with the run's model (``reference``) on labelled validation rows; record ``artifacts.json`` in the
    export folder (and in ``run_dir`` when given). Returns the entry; the caller raises on failure (after
    writing its own report) with :func:`export_failure_message`."""
    probe = compare_predictions(reference.logits(texts, pairs), candidate.logits(texts, pairs), labels,
                                None if quantized else EXPORT_FP32_TOLERANCE, max_metric_drop)
    probe["reloaded_with"] = candidate.description
    entry = {"kind": "export", "passed": probe["passed"], "probe": probe, "files": file_records(export_dir)}
    record_artifact(export_dir / ARTIFACTS_NAME, "export", entry)
    if run_dir is not None and (run_dir / ARTIFACTS_NAME).is_file():
        try:
            record_artifact(run_dir / ARTIFACTS_NAME, key or f"export:{export_dir}", entry)
        except OSError:
            pass  # a read-only run folder: the export folder's own record is the one that counts
    return entry


def export_failure_message(entry: dict[str, Any], export_dir: Path, run_dir: Path) -> str:
    return (f"{export_dir}: the exported model failed its integrity gate: {'; '.join(entry['probe']['problems'])}. "
            f"The run's own model in {run_dir / 'model'} is unchanged and still good; details in "
            f"{export_dir / ARTIFACTS_NAME}. Do not ship this export")


# ----------------------------------------------------------------------------- the check at load time

# Set (to "1") by `--no-verify`: every loader then reads the files without comparing them with artifacts.json.
SKIP_VERIFY_ENV = "TUNEFORGE_NO_VERIFY"
# The folders of a run whose files the save gate records (``model/``; ``base/`` + ``adapter/``).
RUN_FOLDERS = ("model", "adapter", "base")
# What `tuneforge export` writes beside the model (tuneforge.apps.export.runtime.REPORT_NAME).
EXPORT_REPORT_NAME = "export_report.json"
# Records beside an export's model files, rewritten after its check (they are not the model).
EXPORT_RECORDS = (ARTIFACTS_NAME, EXPORT_REPORT_NAME)
# Folders found intact in this process, by the (path, size, mtime) of their files: a server or a test that
# loads the same run twice hashes it once; a file rewritten since changes the key.
_VERIFIED: set[tuple] = set()


def verification_skipped() -> bool:
    """Whether ``--no-verify`` (the environment variable :data:`SKIP_VERIFY_ENV`) turned the load-time check off."""
    return os.environ.get(SKIP_VERIFY_ENV) == "1"


@contextmanager
def skip_verification(skip: bool = True) -> Iterator[None]:
    """Within the block (when ``skip``), loaders do not compare files with ``artifacts.json`` (``--no-verify``)."""
    if not skip:
        yield
        return
    previous = os.environ.get(SKIP_VERIFY_ENV)
    os.environ[SKIP_VERIFY_ENV] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SKIP_VERIFY_ENV, None)
        else:
            os.environ[SKIP_VERIFY_ENV] = previous


def verify_run_files(run_dir: str | Path) -> None:
    """Before a run's model is loaded (``predict``, ``eval``, ``export``, ``serve``, ``generate``, a teacher or
    ``--from``): every file under ``model/``, ``adapter/`` and ``base/`` must have the sha256 that
    ``artifacts.json`` recorded when the save gate read the run back. Raises :class:`IntegrityError` (one
    line naming the first changed or missing file) otherwise, or when the record is missing or says the gate
    failed. A run without any of those folders has nothing to load and passes (its loader says what is
    missing). Off under ``--no-verify``."""
    run_dir = Path(run_dir)
    if verification_skipped() or not any((run_dir / name).is_dir() for name in RUN_FOLDERS):
        return
    entry = _recorded_entry(run_dir, "run", "model")
    _verify_entry(entry, run_dir, RUN_FOLDERS, (), "model")


def verify_export_files(export_dir: str | Path) -> None:
    """:func:`verify_run_files` for an export folder (``serve EXPORT_DIR``): every file but the records must
    have the sha256 its export gate recorded in the folder's ``artifacts.json``."""
    export_dir = Path(export_dir)
    if verification_skipped():
        return
    entry = _recorded_entry(export_dir, "export", "export")
    _verify_entry(entry, export_dir, None, EXPORT_RECORDS, "export")


def _recorded_entry(folder: Path, key: str, what: str) -> dict[str, Any]:
    record_file = folder / ARTIFACTS_NAME
    skip = "pass --no-verify to load it unchecked"
    if not record_file.is_file():
        raise IntegrityError(f"{folder}: has no {ARTIFACTS_NAME}, so its {what} files cannot be checked against what "
                             f"its integrity gate read back (written by a tuneforge without the gate, or the record was "
                             f"removed); {'train' if key == 'run' else 'export'} again, or {skip}")
    try:
        entry = json.loads(record_file.read_text(encoding="utf-8"))["artifacts"][key]
        files = entry["files"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise IntegrityError(f"{record_file}: cannot be read as an integrity record ({type(error).__name__}: "
                             f"{error}); the {what} files cannot be checked: {skip}") from None
    if not isinstance(files, list):
        raise IntegrityError(f"{record_file}: its '{key}' entry has no list of files; {skip}")
    if not entry.get("passed"):
        problems = "; ".join(entry.get("probe", {}).get("problems", [])) or "no reason recorded"
        raise IntegrityError(f"{folder}: this {what} failed its integrity gate when it was written ({problems}); "
                             f"do not use it (tuneforge doctor {folder}), or {skip}")
    return entry


def _verify_entry(entry: dict[str, Any], folder: Path, scope: tuple[str, ...] | None, ignore: tuple[str, ...],
                  what: str) -> None:
    roots = [folder / sub for sub in scope] if scope is not None else [folder]
    files = sorted(path for root in roots if root.is_dir() for path in root.rglob("*") if path.is_file())
    signature = (str(folder.resolve()), (folder / ARTIFACTS_NAME).stat().st_mtime_ns,
                 tuple((str(path), path.stat().st_size, path.stat().st_mtime_ns) for path in files))
    if signature in _VERIFIED:
        return
    found = compare_files(entry["files"], folder, scope, ignore)
    damaged = [(path, "changed since it was checked (its sha256 differs from artifacts.json)") for path in found.changed]
    damaged += [(path, "missing (artifacts.json records it)") for path in found.missing]
    if damaged:
        path, how = damaged[0]
        more = f"; {len(damaged) - 1} more recorded files differ too" if len(damaged) > 1 else ""
        raise IntegrityError(f"{folder / path}: {how}{more}; this {what} is damaged: restore the folder from a good "
                             f"copy or {'train' if scope else 'export'} again (tuneforge doctor {folder} lists every "
                             "file), or pass --no-verify to load it anyway")
    _VERIFIED.add(signature)
