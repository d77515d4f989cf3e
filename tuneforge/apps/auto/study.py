"""The budgeted search of ``tuneforge auto``: an Optuna study of ``tuneforge search`` (same storage, heartbeat,
resume, one trial = one run of the training loop in ``auto/trials/trial-NNNN/``) over a conditional space —
the method, its learning rate, the epochs, LoRA's rank and target layers, how many top layers ``freeze``
trains — pruned by Hyperband (successive halving in several brackets) on each epoch's validation metric.

Trials are started one at a time while one more, and the finishing step after it, fit in the time left; each
trial also carries ``train.time_budget_minutes``, so that a trial slower than estimated is cut, not the budget.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tuneforge.apps.auto.budget import FIRST_GUESS_OVERHEAD_S, SAFETY, Budget, TrialClock
from tuneforge.apps.search.study import Objective, SearchSpec, finished_trials, open_study
from tuneforge.base.errors import UserError
from tuneforge.base.models import load_model_config

# Learning-rate ranges per method (log-uniform): full fine-tuning moves every weight and wants small steps;
# LoRA and a head on a frozen body train few, freshly initialised weights and want about ten times larger.
LEARNING_RATES = {"full": (1.0e-5, 1.0e-4), "lora": (1.0e-4, 2.0e-3), "freeze": (1.0e-4, 3.0e-3)}
EPOCH_CHOICES = (1, 2, 3)
LORA_RANKS = (8, 16)
LORA_TARGETS = ("attention", "all-linear")  # PEFT's default for the model (query/value) or every linear layer
MAX_TRIALS = 24  # the search stops here even with time left: past this, the finish gains more from the time
HEAD_NAMES = ("classifier", "score", "pooler", "pre_classifier", "lm_head")


@dataclass
class SearchSpace:
    """What the search varies, with the keys the user fixed taken out."""

    methods: list[str]
    learning_rate: bool = True
    epochs: bool = True
    num_layers: int = 0
    linear_modules: tuple[str, ...] = ()

    def describe(self) -> dict[str, str]:
        """Each searched key and its range, in words (auto.md and auto.json)."""
        lines = {"method.name": f"choice of {self.methods}"}
        if self.learning_rate:
            for method in self.methods:
                low, high = LEARNING_RATES[method]
                lines[f"train.learning_rate ({method})"] = f"log-uniform [{low:g}, {high:g}]"
        if self.epochs:
            lines["train.epochs"] = f"choice of {list(EPOCH_CHOICES)}"
        if "lora" in self.methods:
            lines["method.r (lora)"] = f"choice of {list(LORA_RANKS)}, alpha = 2 r"
            lines["method.target_modules (lora)"] = (f"attention (the model's default, query/value) or all linear "
                                                     f"layers {list(self.linear_modules)}")
        if "freeze" in self.methods:
            lines["method.unfreeze_top_layers (freeze)"] = f"int [0, {self.top_layers()}]"
        return lines

    def top_layers(self) -> int:
        return max(1, self.num_layers // 2)

    def flat(self) -> dict[str, Any]:
        """A plain ``tuneforge search`` space covering the same keys (search.json; the pruner's epoch range)."""
        space: dict[str, Any] = {"method.name": {"type": "choice", "values": list(self.methods)},
                                 "train.epochs": {"type": "choice", "values": list(EPOCH_CHOICES if self.epochs
                                                                                   else (1,))}}
        if self.learning_rate:
            space["train.learning_rate"] = {"type": "loguniform",
                                            "low": min(LEARNING_RATES[m][0] for m in self.methods),
                                            "high": max(LEARNING_RATES[m][1] for m in self.methods)}
        return space

    def to_dict(self) -> dict[str, Any]:
        return {"methods": self.methods, "learning_rate": self.learning_rate, "epochs": self.epochs,
                "num_layers": self.num_layers, "linear_modules": list(self.linear_modules)}


def linear_module_names(model_name: str) -> tuple[int, tuple[str, ...]]:
    """(layers, the names of the body's linear layers) of a model, read from its config on the meta device
    (no weights loaded)."""
    from transformers import AutoModel

    config = load_model_config(model_name)
    with torch.device("meta"):
        model = AutoModel.from_config(config)
    names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, nn.Linear) and not any(head in name for head in HEAD_NAMES)})
    layers = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "n_layer", 0) or 0)
    return layers, tuple(names)


class AutoObjective(Objective):
    """A ``search`` trial whose values come from the conditional space; it records its wall time and the
    recipe keys it set, and carries the time cap of the moment it starts."""

    def __init__(self, spec: SearchSpec, space: SearchSpace) -> None:
        super().__init__(spec)
        self.space = space
        self.time_cap_s: float | None = None

    def suggest(self, trial) -> dict[str, Any]:
        space = self.space
        method = trial.suggest_categorical("method.name", space.methods)
        values: dict[str, Any] = {"method.name": method}
        if space.learning_rate:
            low, high = LEARNING_RATES[method]
            values["train.learning_rate"] = trial.suggest_float(f"learning_rate[{method}]", low, high, log=True)
        if space.epochs:
            values["train.epochs"] = trial.suggest_categorical("train.epochs", list(EPOCH_CHOICES))
        if method == "lora":
            rank = trial.suggest_categorical("lora.r", list(LORA_RANKS))
            values["method.r"], values["method.alpha"] = rank, 2 * rank
            targets = trial.suggest_categorical("lora.target_modules", list(LORA_TARGETS))
            values["method.target_modules"] = ("auto" if targets == "attention" or not space.linear_modules
                                               else list(space.linear_modules))
        elif method == "freeze":
            values["method.unfreeze_top_layers"] = trial.suggest_int("freeze.unfreeze_top_layers", 0,
                                                                     space.top_layers())
        if self.time_cap_s is not None:
            values["train.time_budget_minutes"] = round(max(self.time_cap_s, 1.0) / 60, 4)
        trial.set_user_attr("values", values)
        return values

    def __call__(self, trial) -> float:
        started = time.perf_counter()
        try:
            return super().__call__(trial)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))


@dataclass
class TrialRecord:
    """One trial as auto.md shows it."""

    number: int
    state: str
    values: dict[str, Any]
    value: float | None
    epochs_run: int
    seconds: float | None
    run_dir: str | None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def trial_timing(run_dir: Path) -> tuple[float, int, float]:
    """(model load seconds, epochs validated, training seconds) of a trial's run folder."""
    load_s = 0.0
    try:
        load_s = float(json.loads((run_dir / "run.json").read_text(encoding="utf-8")).get("model_load_seconds", 0.0))
    except (OSError, ValueError, TypeError):
        pass
    epochs, train_s = 0, 0.0
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if "train_seconds" in record:
                epochs += 1
                train_s += float(record["train_seconds"])
    return load_s, epochs, train_s


def trial_records(study) -> list[TrialRecord]:
    """Every trial of the study, in order."""
    records = []
    for frozen in study.get_trials(deepcopy=False):
        run_dir = frozen.user_attrs.get("run_dir")
        epochs = trial_timing(Path(run_dir))[1] if run_dir else 0
        state = frozen.state.name.lower()
        note = frozen.user_attrs.get("error", "") if state == "fail" else ""
        records.append(TrialRecord(number=frozen.number, state=state, values=frozen.user_attrs.get("values", {}),
                                   value=frozen.value if state == "complete" else None, epochs_run=epochs,
                                   seconds=frozen.user_attrs.get("seconds"), run_dir=run_dir, note=note))
    return records


def fail_interrupted_trials(study, log) -> int:
    """Trials left running by a killed ``auto`` (one process owns its output folder): marked failed, so the
    study goes on without them; their folders stay as they were."""
    from optuna.trial import TrialState

    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for frozen in stale:
        study.tell(frozen.number, state=TrialState.FAIL)
    if stale:
        log(f"{len(stale)} trial(s) interrupted by the previous run marked failed: "
            + ", ".join(str(frozen.number) for frozen in stale))
    return len(stale)


def run_study(spec: SearchSpec, space: SearchSpace, budget: Budget, clock: TrialClock,
              finish_reserve: Callable[[], float], log, on_trial=None) -> None:
    """Run trials while the next one and the finishing step (``finish_reserve()`` seconds, re-estimated as the
    trials teach the clock) fit in the time left."""
    study = open_study(spec)
    fail_interrupted_trials(study, log)
    objective = AutoObjective(spec, space)
    while True:
        if finished_trials(study) >= MAX_TRIALS:
            log(f"search: {MAX_TRIALS} trials done; the rest of the time goes to the finish")
            break
        search_left = budget.left() - finish_reserve()
        estimates = [clock.trial_seconds(method, 1) for method in space.methods]
        known = [estimate for estimate in estimates if estimate is not None]
        # the shortest trial the space allows must fit; a longer draw is cut by its time cap
        needed = max(known) if known else max(0.1 * budget.total_s, 2 * SAFETY * FIRST_GUESS_OVERHEAD_S)
        if search_left < needed:
            log(f"search: {max(search_left, 0):.0f}s left before the finish's share of the time, a trial needs "
                f"~{needed:.0f}s: stopping")
            break
        if known:
            objective.time_cap_s = max(search_left - (clock.overhead_s or 0.0), 1.0)
        else:  # nothing measured yet: the first trial's training may take a third of the search time (its
            # loading, validation and saving come on top, unmeasured)
            objective.time_cap_s = max(search_left / 3, 1.0)
        study.optimize(objective, n_trials=1, catch=(UserError,), gc_after_trial=True)
        frozen = study.get_trials(deepcopy=False)[-1]
        run_dir = frozen.user_attrs.get("run_dir")
        if run_dir and frozen.user_attrs.get("seconds") is not None:
            load_s, epochs, train_s = trial_timing(Path(run_dir))
            clock.record(frozen.user_attrs.get("values", {}).get("method.name", space.methods[0]),
                         float(frozen.user_attrs["seconds"]), load_s, epochs, train_s)
        if on_trial is not None:
            on_trial(study, frozen)


def best_trial(study):
    """The best completed trial, or None when no trial completed."""
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial
