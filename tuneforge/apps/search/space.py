"""The search space file: which recipe keys a search varies, and how.

A space file is a YAML mapping from a dotted recipe key (the same keys ``--set`` takes) to a distribution::

    train.learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-3}
    train.warmup_ratio:  {type: uniform, low: 0.0, high: 0.2}
    train.batch_size:    {type: choice, values: [16, 32]}
    method.r:            {type: int, low: 4, high: 16, step: 4}

This module parses and checks the file (every problem names the file, the key and the fix), asks an
Optuna trial for one value per key, and turns values into ``--set`` items. Whether the values make a
valid recipe is checked by :func:`check_space_against_recipe` with the recipe's own validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneforge.base.errors import UserError, did_you_mean
from tuneforge.core.recipe import load_recipe

DISTRIBUTIONS = {
    "loguniform": ("low", "high"),
    "uniform": ("low", "high"),
    "int": ("low", "high"),
    "choice": ("values",),
}
OPTIONAL_FIELDS = {"int": ("step", "log"), "uniform": ("step",), "loguniform": (), "choice": ()}


@dataclass(frozen=True)
class Parameter:
    """One searched recipe key and its distribution."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    values: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """Draw this parameter's value from an Optuna trial."""
        if self.kind == "loguniform":
            return trial.suggest_float(self.key, self.low, self.high, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(self.key, self.low, self.high, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_categorical(self.key, list(self.values))

    def extremes(self) -> list[Any]:
        """Values at the edges of the distribution (all of a choice): what the recipe must accept."""
        return list(self.values) if self.kind == "choice" else [self.low, self.high]

    def describe(self) -> str:
        if self.kind == "choice":
            return f"choice of {list(self.values)}"
        extra = f", step {self.step}" if self.step else ""
        return f"{self.kind} [{self.low}, {self.high}{extra}]{' (log)' if self.log and self.kind == 'int' else ''}"

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"type": "choice", "values": list(self.values)}
        spec: dict[str, Any] = {"type": self.kind, "low": self.low, "high": self.high}
        if self.step is not None:
            spec["step"] = self.step
        if self.log:
            spec["log"] = True
        return spec


def load_space(path: str | Path) -> list[Parameter]:
    """Read and check a space file; raise UserError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: search space file not found (check --space)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise UserError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_space(raw, str(path))


def parse_space(raw: Any, source: str = "space") -> list[Parameter]:
    """Check a space mapping (already read from YAML); raise UserError listing every problem."""
    example = "e.g. `train.learning_rate: {type: loguniform, low: 1.0e-5, high: 1.0e-3}`"
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{source}: a search space is a mapping of dotted recipe keys to distributions, {example}")
    parameters, problems = [], []
    for key, spec in raw.items():
        try:
            parameters.append(_parse_parameter(str(key), spec))
        except ValueError as exc:
            problems.append(f"{source}: {key}: {exc}")
    if problems:
        raise UserError("\n".join(problems))
    return parameters


def _parse_parameter(key: str, spec: Any) -> Parameter:
    if not key or any(not part for part in key.split(".")):
        raise ValueError("not a dotted recipe key such as train.learning_rate")
    if isinstance(spec, list):
        spec = {"type": "choice", "values": spec}  # a bare list is a choice
    if not isinstance(spec, dict):
        raise ValueError(f"must be a mapping with a `type` ({', '.join(DISTRIBUTIONS)}) or a list of choices")
    kind = spec.get("type")
    if kind not in DISTRIBUTIONS:
        hint = did_you_mean(str(kind), DISTRIBUTIONS) if kind is not None else ""
        raise ValueError(f"type {kind!r} unknown{hint}; choose one of {', '.join(DISTRIBUTIONS)}")
    allowed = ("type", *DISTRIBUTIONS[kind], *OPTIONAL_FIELDS[kind])
    for field in spec:
        if field not in allowed:
            raise ValueError(f"unknown field '{field}' for {kind}{did_you_mean(str(field), allowed)}; "
                             f"known fields: {', '.join(allowed)}")
    for field in DISTRIBUTIONS[kind]:
        if field not in spec:
            raise ValueError(f"{kind} needs `{field}`")
    if kind == "choice":
        values = spec["values"]
        if not isinstance(values, list) or not values:
            raise ValueError("choice needs a non-empty list `values`")
        for value in values:
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise ValueError(f"choice values must be numbers, strings, booleans or null (got {value!r})")
        if len({repr(v) for v in values}) != len(values):
            raise ValueError("choice values must be distinct")
        return Parameter(key, kind, values=tuple(values))

    low, high, step = spec["low"], spec["high"], spec.get("step")
    number = int if kind == "int" else (int, float)
    for name, value in (("low", low), ("high", high), ("step", step)):
        if value is None and name == "step":
            continue
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise ValueError(f"`{name}` must be {'an integer' if kind == 'int' else 'a number'} (got {value!r}; "
                             "write floats with a dot, 1.0e-5, or YAML reads them as text)")
    if low >= high:
        raise ValueError(f"`low` ({low}) must be below `high` ({high})")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"loguniform needs `low` > 0 (got {low}); use uniform for ranges that include 0")
    if step is not None and step <= 0:
        raise ValueError(f"`step` must be positive (got {step})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"`log` must be true or false (got {log!r})")
    if log and (low <= 0 or step not in (None, 1)):
        raise ValueError("int with log: true needs `low` >= 1 and no step")
    return Parameter(key, kind, float(low) if kind != "int" else low, float(high) if kind != "int" else high,
                     step, log)


def override_item(key: str, value: Any) -> str:
    """``key=value`` for :func:`tuneforge.base.recipe.load_recipe`, the value written so YAML reads it back as is
    (``1e-05`` would come back as a string; YAML needs ``1.0e-05``)."""
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    if text.endswith("\n..."):
        text = text[: -len("\n...")]
    elif text.endswith("..."):
        text = text[:-3].strip()
    return f"{key}={text}"


def check_space_against_recipe(parameters: list[Parameter], recipe_path: str | Path, overrides: list[str],
                               source: str) -> None:
    """Every edge value of every parameter must give a valid recipe (unknown keys, out-of-range values).

    Uses the recipe's own validation, so a typo gets the recipe's "did you mean"."""
    problems = []
    for parameter in parameters:
        for value in parameter.extremes():
            try:
                load_recipe(recipe_path, [*overrides, override_item(parameter.key, value)])
            except UserError as exc:
                reason = str(exc).splitlines()[0]
                reason = reason.split(": ", 1)[1] if reason.startswith("--set ") else reason
                problems.append(f"{source}: {parameter.key}: the value {value!r} does not make a valid recipe: "
                                f"{reason}")
                break
    if problems:
        raise UserError("\n".join(problems))
