"""Resumable checkpoints: everything the training loop needs to continue exactly where it stopped.

A checkpoint is a folder ``RUN/checkpoints/checkpoint-<seq>-step-<optimizer step>/`` holding

- ``weights.safetensors``: the parameters the optimizer owns (the trainable weights; the frozen rest is
  rebuilt from the base model, as at the start of the run), the best epoch's weights (``best.`` prefix),
  the optimizer's tensors (``optimizer.`` prefix) and the torch / CUDA RNG states (``rng.`` prefix);
- ``state.json``: the loop's position (epoch, batches done in it, optimizer step, the batch-order RNG's state
  at the start of the epoch), early-stopping state, the count of skipped non-finite steps, the running
  training loss, the size of ``metrics.jsonl`` at that moment, the python and numpy RNG states and the
  non-tensor parts of the optimizer, scheduler and GradScaler state;
- ``manifest.json``, written last: the sha256 and size of the other two.

No pickle anywhere: tensors go to safetensors, everything else to JSON, so loading a checkpoint cannot run
code. The folder is written under a temporary name (each file fsynced), then renamed into place, so a
checkpoint either exists whole or not at all; a checksum mismatch (disk fault, a copy cut short) makes
:func:`find_resumable` fall back to the previous checkpoint with a warning.

This module does not decide *when* to checkpoint; the loop does (``train.checkpoint_every_steps``, every
epoch, Ctrl-C).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tuneforge.base.errors import UserError
from tuneforge.base.faults import fault_point
from tuneforge.base.runfolder import PICKLE_SUFFIXES

CHECKPOINTS_DIR = "checkpoints"
FORMAT_VERSION = 1
NAME_PATTERN = re.compile(r"^checkpoint-(\d{6})-step-(\d+)$")
PARTIAL_PREFIX = ".partial-"
# Files that unpickle on load (torch.save / pickle); a run folder holding one is refused by default.


@dataclass
class LoopState:
    """The training loop's own counters: where it is and what it has learned so far about the epochs."""

    epoch: int = 0  # 0-based epoch to run (or continue)
    batches_done: int = 0  # batches of ``epoch`` already trained
    optimizer_step: int = 0
    epoch_batch_order_state: Any = None  # random.Random state before ``epoch``'s batches were drawn
    best_score: float | None = None
    best_epoch: int = -1
    best_metrics: dict[str, Any] = field(default_factory=dict)
    epochs_without_improvement: int = 0
    bad_steps: int = 0
    running_loss: float = 0.0
    running_count: int = 0
    metrics_bytes: int = 0  # size of metrics.jsonl when the checkpoint was taken


@dataclass
class Restored:
    """What :func:`restore` hands back to the loop."""

    path: Path
    loop: LoopState
    best_state: dict[str, torch.Tensor] | None


# ----------------------------------------------------------------------------- JSON with tuples


def _to_json(value: Any) -> Any:
    """Plain JSON, except tuples are tagged so they come back as tuples (optimizer betas, RNG states)."""
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(item) for item in value]}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _to_json(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.Tensor):
        return {"__tensor__": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint's state.json")


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(item) for item in value]
    if isinstance(value, dict):
        if "__tuple__" in value:
            return tuple(_from_json(item) for item in value["__tuple__"])
        if "__ndarray__" in value:
            return np.array(value["__ndarray__"], dtype=value["dtype"])
        if "__tensor__" in value:
            return torch.tensor(value["__tensor__"], dtype=getattr(torch, value["dtype"]))
        return {key: _from_json(item) for key, item in value.items()}
    return value


# ----------------------------------------------------------------------------- RNG states


def capture_rng_states() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(JSON-able states of python and numpy, tensors of torch and every CUDA device)."""
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = state
    return {"python": random.getstate(), "numpy": np.random.get_state()}, tensors


def restore_rng_states(states: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    random.setstate(_as_random_state(states["python"]))
    np.random.set_state(tuple(states["numpy"]))
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[f"rng.cuda.{i}"] for i in range(len(tensors)) if f"rng.cuda.{i}" in tensors]  # device order
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def _as_random_state(state: Any) -> tuple:
    """random.Random.setstate wants (version, tuple_of_ints, gauss_next)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


# ----------------------------------------------------------------------------- optimizer state


def _split_optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return {"param_groups": state["param_groups"], "scalars": scalars}, tensors


def _join_optimizer_state(saved: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, entries in saved["scalars"].items():
        state.setdefault(int(index), {}).update(entries)
    return {"state": state, "param_groups": saved["param_groups"]}


# ----------------------------------------------------------------------------- files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as stream:
        os.fsync(stream.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The run's checkpoint folders, oldest first (by sequence number in the name)."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir()
             if path.is_dir() and (match := NAME_PATTERN.match(path.name))]
    return [path for _, path in sorted(found)]


class Checkpointer:
    """Writes checkpoints into ``RUN/checkpoints`` and keeps the newest ``keep``."""

    def __init__(self, run_dir: Path, keep: int, enabled: bool = True) -> None:
        self.folder = Path(run_dir) / CHECKPOINTS_DIR
        self.keep = keep
        self.enabled = enabled and keep > 0
        self.last_saved: Path | None = None

    def save(self, loop: LoopState, trainable: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
             scheduler: Any, scaler: torch.amp.GradScaler | None,
             best_state: dict[str, torch.Tensor] | None) -> Path | None:
        """Write one checkpoint atomically; return its folder (None when checkpoints are off)."""
        if not self.enabled:
            return None
        self.folder.mkdir(parents=True, exist_ok=True)
        existing = checkpoint_dirs(self.folder.parent)
        sequence = int(NAME_PATTERN.match(existing[-1].name).group(1)) + 1 if existing else 1
        name = f"checkpoint-{sequence:06d}-step-{loop.optimizer_step}"
        partial = self.folder / f"{PARTIAL_PREFIX}{name}-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        try:
            self._write(partial, loop, trainable, optimizer, scheduler, scaler, best_state)
        except BaseException:  # a full disk, say: free what the cut-short write took; the previous checkpoints stay
            shutil.rmtree(partial, ignore_errors=True)
            raise
        final = self.folder / name
        os.replace(partial, final)
        _fsync_dir(self.folder)
        self.last_saved = final
        self._prune()
        return final

    @staticmethod
    def _write(partial: Path, loop: LoopState, trainable: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: Any, scaler: torch.amp.GradScaler | None,
               best_state: dict[str, torch.Tensor] | None) -> None:
        """The checkpoint's three files in ``partial``, each fsynced, the manifest last."""
        rng_json, rng_tensors = capture_rng_states()
        optimizer_json, optimizer_tensors = _split_optimizer_state(optimizer)
        tensors: dict[str, torch.Tensor] = {}
        tensors.update({f"model.{key}": value for key, value in trainable.items()})
        tensors.update({f"best.{key}": value for key, value in (best_state or {}).items()})
        tensors.update(optimizer_tensors)
        tensors.update(rng_tensors)
        # safetensors wants contiguous CPU tensors that share no memory.
        save_file({key: value.detach().to("cpu").contiguous().clone() for key, value in tensors.items()},
                  str(partial / "weights.safetensors"))
        fault_point("checkpoint-write")  # TUNEFORGE_FAULT: the reliability tests' kill -9 (docs/reliability.md)
        state = {"format": FORMAT_VERSION, "loop": asdict(loop), "rng": rng_json, "optimizer": optimizer_json,
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                 "has_best": best_state is not None}
        (partial / "state.json").write_text(json.dumps(_to_json(state)), encoding="utf-8")
        files = {}
        for filename in ("weights.safetensors", "state.json"):
            _fsync_file(partial / filename)
            files[filename] = {"sha256": _sha256(partial / filename), "bytes": (partial / filename).stat().st_size}
        manifest = {"format": FORMAT_VERSION, "epoch": loop.epoch, "batches_done": loop.batches_done,
                    "optimizer_step": loop.optimizer_step, "files": files}
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        _fsync_file(partial / "manifest.json")
        _fsync_dir(partial)

    def remove_all(self, log=print) -> None:
        """Delete every checkpoint once the model is saved: a finished training cannot be resumed."""
        if self.enabled:
            remove_checkpoints(self.folder.parent, log)

    def _prune(self) -> None:
        for old in checkpoint_dirs(self.folder.parent)[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for leftover in self.folder.glob(f"{PARTIAL_PREFIX}*"):  # a save cut short by a kill
            shutil.rmtree(leftover, ignore_errors=True)


def remove_checkpoints(run_dir: Path, log=print) -> None:
    """Delete the run's checkpoints: once the run is complete there is nothing left to resume."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    if folder.is_dir():
        shutil.rmtree(folder, ignore_errors=True)
        log(f"removed {folder} (training finished and the model is saved)")


# ----------------------------------------------------------------------------- reading back


def verify(checkpoint: Path, allow_pickle: bool = False) -> str | None:
    """None when ``checkpoint`` is whole and intact, else what is wrong with it."""
    manifest_path = checkpoint / "manifest.json"
    if not manifest_path.is_file():
        return "no manifest.json (the write was cut short)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return "manifest.json is unreadable"
    if manifest.get("format") != FORMAT_VERSION:
        return f"format {manifest.get('format')!r}, this tuneforge reads format {FORMAT_VERSION}"
    pickles = sorted(p.name for p in checkpoint.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles and not allow_pickle:
        return (f"holds pickle file(s) {', '.join(pickles)}, which can run code when loaded; tuneforge writes "
                "safetensors + JSON only")
    for filename, expected in files.items():
        path = checkpoint / filename
        if not path.is_file():
            return f"{filename} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{filename} has {path.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if _sha256(path) != expected["sha256"]:
            return f"{filename} does not match its sha256 checksum (corrupt)"
    return None


def find_resumable(run_dir: Path, log=print, allow_pickle: bool = False) -> tuple[Path, list[dict[str, str]]]:
    """The newest intact checkpoint of ``run_dir`` and the newer ones skipped (with why); UserError if none."""
    skipped: list[dict[str, str]] = []
    candidates = checkpoint_dirs(run_dir)
    for checkpoint in reversed(candidates):
        problem = verify(checkpoint, allow_pickle)
        if problem is None:
            return checkpoint, skipped
        log(f"warning: checkpoint {checkpoint.name} is unusable ({problem}); trying the previous one")
        skipped.append({"checkpoint": checkpoint.name, "problem": problem})
    if not candidates:
        raise UserError(f"{run_dir}: has no checkpoint to resume from ({run_dir / CHECKPOINTS_DIR} is empty or "
                        "missing; was train.keep_checkpoints 0, or did the run stop before its first checkpoint?)")
    raise UserError(f"{run_dir}: none of its {len(candidates)} checkpoint(s) is intact: "
                    + "; ".join(f"{s['checkpoint']}: {s['problem']}" for s in skipped))


def restore(checkpoint: Path, trainable: dict[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
            scheduler: Any, scaler: torch.amp.GradScaler | None) -> Restored:
    """Load ``checkpoint`` into the freshly built model, optimizer, scheduler, scaler and every RNG."""
    tensors = load_file(str(checkpoint / "weights.safetensors"))
    state = _from_json(json.loads((checkpoint / "state.json").read_text(encoding="utf-8")))
    saved_names = {key.removeprefix("model.") for key in tensors if key.startswith("model.")}
    if saved_names != set(trainable):
        missing, extra = sorted(set(trainable) - saved_names), sorted(saved_names - set(trainable))
        raise UserError(f"{checkpoint}: its weights do not fit this model (missing {missing[:3]}, unexpected "
                        f"{extra[:3]}); was the recipe in the run folder changed?")
    with torch.no_grad():
        for name, parameter in trainable.items():
            parameter.copy_(tensors[f"model.{name}"].to(parameter.device))
    optimizer.load_state_dict(_join_optimizer_state(state["optimizer"], tensors))
    scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    restore_rng_states(state["rng"], {k: v for k, v in tensors.items() if k.startswith("rng.")})
    best = ({key.removeprefix("best."): value for key, value in tensors.items() if key.startswith("best.")}
            if state["has_best"] else None)
    loop = LoopState(**state["loop"])
    loop.epoch_batch_order_state = _as_random_state(loop.epoch_batch_order_state)
    return Restored(path=checkpoint, loop=loop, best_state=best)


def truncate_metrics(metrics_path: Path, size: int) -> None:
    """Drop metrics.jsonl lines written after the checkpoint: the resumed run writes them again."""
    if metrics_path.exists() and metrics_path.stat().st_size > size:
        with metrics_path.open("r+b") as stream:
            stream.truncate(size)


# ----------------------------------------------------------------------------- guards


class NonFiniteLossError(UserError):
    """Training stopped because too many batches had a NaN or infinite loss."""


class BadStepGuard:
    """Counts batches whose loss is not finite; their optimizer step is skipped by the loop."""

    def __init__(self, max_bad_steps: int, log=print, already: int = 0) -> None:
        self.max_bad_steps = max_bad_steps
        self.count = already
        self.log = log

    def record(self, loss: torch.Tensor, optimizer_step: int, last_checkpoint: Path | None, run_dir: Path) -> None:
        """Note one non-finite loss; raise :class:`NonFiniteLossError` once ``max_bad_steps`` is reached."""
        self.count += 1
        self.log(f"warning: loss is {loss.item()} at optimizer step {optimizer_step + 1}; skipping that step "
                 f"({self.count}/{self.max_bad_steps} allowed by train.max_bad_steps)")
        if self.count >= self.max_bad_steps:
            kept = (f"the last good checkpoint is kept: {last_checkpoint}" if last_checkpoint
                    else "no checkpoint had been written yet")
            raise NonFiniteLossError(
                f"training stopped: {self.count} batches had a non-finite loss (train.max_bad_steps="
                f"{self.max_bad_steps}); {kept}. Lower train.learning_rate, keep train.max_grad_norm set, or use "
                "train.precision: fp32")


def explain_out_of_memory(exc: BaseException) -> UserError:
    """The user-facing message for a GPU out-of-memory error: the keys that lower memory use."""
    return UserError(
        f"the GPU ran out of memory ({str(exc).splitlines()[0] if str(exc) else 'CUDA out of memory'}). Keys that "
        "reduce memory: train.batch_size (lower it and raise train.grad_accum_steps to keep the effective batch), "
        "train.gradient_checkpointing: true, data.max_length, method.name: lora (or freeze), train.precision: "
        "bf16; `tuneforge plan RECIPE --gpu NAME` estimates what fits")


def check_free_disk(run_dir: Path, trainable_params: int, total_params: int, keep: int) -> None:
    """UserError before the first step when the run folder's disk cannot hold the checkpoints and model."""
    per_checkpoint = 4 * trainable_params * 4  # fp32 weights, best weights and AdamW's two moments
    needed = (keep + 1) * per_checkpoint + 4 * total_params  # one more while the newest is written; the model
    free = shutil.disk_usage(run_dir).free
    if free < needed * 1.1:
        raise UserError(f"{run_dir}: only {free / 2**20:.0f} MiB free on its disk; this run needs about "
                        f"{needed * 1.1 / 2**20:.0f} MiB ({keep} checkpoint(s) of {per_checkpoint / 2**20:.1f} MiB "
                        "plus the model). Free some space, choose another --output, or lower train.keep_checkpoints")


# ----------------------------------------------------------------------------- Ctrl-C


class StopRequest:
    """First Ctrl-C (SIGINT): ask the loop to checkpoint and stop at the next optimizer step; second: stop now."""

    def __init__(self, log=print) -> None:
        self.requested = False
        self.log = log

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.log("\ninterrupt: saving a checkpoint at the end of this optimizer step (Ctrl-C again to stop at once)")

    @contextmanager
    def installed(self) -> Iterator[StopRequest]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signals reach the main thread only; nothing to install
            return
        previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a checkpoint was saved (``checkpoint``; None if checkpoints are off)."""

    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__("interrupted")
        self.checkpoint = checkpoint


def snapshot_trainable(method, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the weights the optimizer owns: the best epoch's, kept while training goes on."""
    return {name: p.detach().to("cpu", copy=True) for name, p in method.optimizer_parameters(model)}


def keep_best_epoch(model: torch.nn.Module, best_state: dict[str, torch.Tensor] | None,
                    gradient_checkpointing: bool) -> None:
    """Make ``model`` the model to save: the best epoch's weights put back (when a snapshot was kept), gradient
    checkpointing off, eval mode."""
    if best_state is not None:
        with torch.no_grad():
            parameters = dict(model.named_parameters())
            for name, value in best_state.items():
                parameters[name].copy_(value.to(parameters[name].device))
    if gradient_checkpointing:
        model.gradient_checkpointing_disable()
    model.eval()
