"""The launch form: a recipe file from a recipe folder (or none) plus model, data file, method and ``--set``
overrides, turned into what ``tuneforge train`` takes — a recipe file and a list of overrides — then validated
(errors sorted to the form field they concern) and planned.

With a recipe file, each filled field becomes an override (``model=...``, ``data.train=...``,
``method.name=...``) before the lines of the overrides box. Without one, the fields make a small recipe file,
written to ``RUNS/.tuneforge-ui/recipes/`` (named by its content, so checking the same form twice writes it once).

Paths typed into the form (data file, a model folder, a path-like override value) must lie inside the recipe
folders or the runs folder; paths inside a recipe file are its author's and are used as written.
"""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tuneforge.apps.plan import GB, make_plan
from tuneforge.apps.ui.processes import STATE_FOLDER
from tuneforge.apps.ui.safety import Refused, confined
from tuneforge.base.errors import UserError
from tuneforge.base.models import ALIASES
from tuneforge.core.engine.validate import ValidatedJob, validate_job

FIELDS = ("recipe", "model", "data", "method", "overrides")
RECIPE_SUFFIXES = (".yaml", ".yml")
RECIPES_LISTED = 300
RECIPE_SEARCH_DEPTH = 3  # folders below a recipe folder searched for recipe files
# The override key each form field writes.
FIELD_KEYS = {"model": "model", "data": "data.train", "method": "method.name"}


class FormErrors(Exception):
    """Problems with the form, by field (``recipe``, ``model``, ``data``, ``method``, ``overrides``)."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(line for lines in errors.values() for line in lines))
        self.errors = errors


@dataclass
class LaunchRequest:
    """What the form sends; every field may be empty except that without a recipe file model, data and method
    are needed."""

    recipe: str = ""  # the id of a listed recipe file: "<folder number>:<path inside that folder>"
    model: str = ""
    data: str = ""
    method: str = ""
    overrides: str = ""  # one KEY=VALUE a line

    @classmethod
    def from_json(cls, body: Any) -> LaunchRequest:
        if not isinstance(body, dict):
            raise Refused(400, "send the form as a JSON object")
        unknown = sorted(set(body) - set(FIELDS))
        if unknown:
            raise Refused(400, f"unknown form field(s) {', '.join(unknown)}; fields are {', '.join(FIELDS)}")
        values = {}
        for name in FIELDS:
            value = body.get(name) or ""
            if not isinstance(value, str):
                raise Refused(400, f"form field {name} must be a string")
            values[name] = value.strip()
        return cls(**values)


@dataclass
class Prepared:
    """A form as ``tuneforge train`` takes it."""

    recipe_path: Path
    overrides: list[str]
    origin: dict[str, str] = field(default_factory=dict)  # override key -> the form field it came from
    data_path: Path | None = None


class LaunchForms:
    """Turns forms into recipe files and overrides, inside the folders the dashboard was given."""

    def __init__(self, recipe_dirs: list[Path], runs_dir: Path) -> None:
        self.recipe_dirs = [d.resolve() for d in recipe_dirs]
        self.runs_dir = runs_dir.resolve()
        self._plan_lock = threading.Lock()  # one plan at a time: each measures memory in child processes

    @property
    def roots(self) -> list[Path]:
        return [*self.recipe_dirs, self.runs_dir]

    def recipes(self) -> list[dict[str, str]]:
        """The recipe files under the recipe folders (``*.yaml`` / ``*.yml`` whose top level has ``model`` and
        ``method`` or ``data``), as ``{"id", "label"}``."""
        found = []
        for number, folder in enumerate(self.recipe_dirs):
            for path in sorted(recipe_candidates(folder, skip=self.runs_dir)):
                if looks_like_recipe(path):
                    relative = path.relative_to(folder).as_posix()
                    found.append({"id": f"{number}:{relative}", "label": f"{folder.name}/{relative}"})
                    if len(found) >= RECIPES_LISTED:
                        return found
        return found

    def recipe_file(self, recipe_id: str) -> Path:
        number, _, relative = recipe_id.partition(":")
        if not number.isdigit() or int(number) >= len(self.recipe_dirs) or not relative:
            raise FormErrors({"recipe": [f"{recipe_id}: not a recipe of this dashboard; pick one from the list"]})
        folder = self.recipe_dirs[int(number)]
        try:
            path = confined(relative, [folder])
        except Refused as refused:
            raise FormErrors({"recipe": [refused.message]}) from None
        if path.suffix not in RECIPE_SUFFIXES or not path.is_file():
            raise FormErrors({"recipe": [f"{relative}: no such recipe file in {folder}"]})
        return path

    def local_path(self, value: str, base: Path, form_field: str) -> str:
        """``value`` as the recipe will get it: a path typed into the form becomes absolute and must be inside
        the dashboard's folders; an alias or hub id (nothing of that name here) stays as it is."""
        if value in ALIASES:
            return value
        looks_like_path = value.startswith(("/", "./", "../", "~")) or (base / value).exists()
        if not looks_like_path:
            return value
        try:
            return str(confined(value, self.roots, base=base))
        except Refused as refused:
            raise FormErrors({form_field: [refused.message]}) from None

    def prepare(self, request: LaunchRequest) -> Prepared:
        """The recipe file and overrides of a form; :class:`FormErrors` for what is wrong before validation."""
        errors: dict[str, list[str]] = {}
        recipe_path = self.recipe_file(request.recipe) if request.recipe else None
        base = recipe_path.parent if recipe_path else (self.recipe_dirs[0] if self.recipe_dirs else self.runs_dir)
        values: dict[str, str] = {}
        for form_field in ("model", "data"):
            value = getattr(request, form_field)
            if value:
                try:
                    values[form_field] = self.local_path(value, base, form_field)
                except FormErrors as problem:
                    errors.update(problem.errors)
        if request.method:
            values["method"] = request.method
        overrides: list[str] = []
        origin: dict[str, str] = {}
        for line in request.overrides.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, equals, value = line.partition("=")
            if not equals or not key.strip():
                errors.setdefault("overrides", []).append(f"{line!r}: write one KEY=VALUE a line, e.g. "
                                                          "train.epochs=2")
                continue
            try:
                value = self.local_path(value.strip(), base, "overrides")
            except FormErrors as problem:
                errors.setdefault("overrides", []).extend(problem.errors["overrides"])
                continue
            overrides.append(f"{key.strip()}={value}")
            origin[key.strip()] = "overrides"
        if recipe_path is None:
            for form_field in ("model", "data", "method"):
                if form_field not in values and form_field not in errors:
                    errors[form_field] = ["needed when no recipe file is chosen"]
        if errors:
            raise FormErrors(errors)
        data_path = Path(values["data"]) if "data" in values else None
        if recipe_path is None:
            recipe_path = self.form_recipe(values)
        else:
            for form_field, key in FIELD_KEYS.items():
                if form_field in values:
                    overrides.insert(0, f"{key}={values[form_field]}")
                    origin[key] = form_field
        return Prepared(recipe_path=recipe_path, overrides=overrides, origin=origin, data_path=data_path)

    def form_recipe(self, values: dict[str, str]) -> Path:
        """A recipe file made of the form's model, data file and method (in the dashboard's state folder)."""
        stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(values["data"]).stem).strip("-._") or "run"
        recipe = {"name": stem[:60], "model": values["model"], "data": {"train": values["data"]},
                  "method": {"name": values["method"]}}
        text = "# written by `tuneforge ui` from its launch form\n" + yaml.safe_dump(recipe, sort_keys=False)
        folder = self.runs_dir / STATE_FOLDER / "recipes"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stem[:60]}-{hashlib.sha256(text.encode()).hexdigest()[:10]}.yaml"
        if not path.is_file():
            path.write_text(text, encoding="utf-8")
        return path

    def validate(self, request: LaunchRequest) -> tuple[Prepared, ValidatedJob]:
        """Prepare and run ``tuneforge validate``'s checks; :class:`FormErrors` with each problem at its field."""
        prepared = self.prepare(request)
        try:
            job = validate_job(prepared.recipe_path, prepared.overrides)
        except UserError as error:
            raise FormErrors(errors_by_field(str(error), prepared, chose_recipe=bool(request.recipe))) from None
        return prepared, job

    def plan(self, request: LaunchRequest) -> dict[str, Any]:
        """``tuneforge plan`` for the form's method only: peak memory and minutes per epoch and for the run."""
        prepared, job = self.validate(request)
        method = job.recipe.method.name
        notes: list[str] = []
        with self._plan_lock:
            try:
                plan = make_plan(str(prepared.recipe_path), prepared.overrides, None, None, None, methods=[method],
                                 log=notes.append)
            except UserError as error:
                raise FormErrors(errors_by_field(str(error), prepared, chose_recipe=bool(request.recipe))) from None
        estimate = next((e for e in plan.methods if e.method == method), None)
        if estimate is None or estimate.error or estimate.memory is None:
            reason = estimate.error if estimate is not None else plan.left_out.get(method, "not estimated")
            raise FormErrors({"method": [f"plan: {method}: {reason}"]})
        epochs = job.recipe.train.epochs
        return {"method": method, "device": plan.device, "peak_gb": estimate.memory.peak() / GB,
                "minutes_per_epoch": estimate.epoch_seconds / 60, "epochs": epochs,
                "minutes": estimate.epoch_seconds * epochs / 60, "trainable_params": estimate.trainable_params,
                "total_params": estimate.total_params, "explanation": plan.explanation}

    def new_run_dir(self, name: str) -> Path:
        """``RUNS/<name>-<timestamp>`` that does not exist yet (as ``tuneforge train`` names a run)."""
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        candidate, suffix = self.runs_dir / f"{name}-{stamp}", 1
        while candidate.exists():
            candidate, suffix = self.runs_dir / f"{name}-{stamp}-{suffix}", suffix + 1
        return candidate


def recipe_candidates(folder: Path, skip: Path, depth: int = RECIPE_SEARCH_DEPTH):
    """YAML files under ``folder`` down to ``depth`` folders, leaving out hidden folders and ``skip``."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix in RECIPE_SUFFIXES:
            yield entry
        elif entry.is_dir() and depth > 0 and entry.resolve() != skip:
            yield from recipe_candidates(entry, skip, depth - 1)


def looks_like_recipe(path: Path) -> bool:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")[:100_000])
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(raw, dict) and "model" in raw and ("method" in raw or "data" in raw)


def errors_by_field(message: str, prepared: Prepared, chose_recipe: bool) -> dict[str, list[str]]:
    """Each line of a validation error under the form field it concerns: an override (``--set KEY``) under the
    field that wrote KEY; otherwise by the key or file the line names (model, data, method); what names none of
    them under the recipe file (or, for a form without one, under the overrides)."""
    errors: dict[str, list[str]] = {}
    data_file = str(prepared.data_path) if prepared.data_path else None
    for line in message.splitlines():
        if not line.strip():
            continue
        setting = re.match(r"\s*--set ([\w.\-]+)", line)
        if setting:
            target = prepared.origin.get(setting.group(1), "overrides")
        elif (data_file and data_file in line) or re.search(r"\bdata\.train\b|\bdata file\b", line):
            target = "data"
        elif re.search(r"\bmethod\b", line):
            target = "method"
        elif re.search(r"\bmodel\b", line):
            target = "model"
        else:
            target = "recipe" if chose_recipe else "overrides"
        errors.setdefault(target, []).append(line.strip())
    return errors
