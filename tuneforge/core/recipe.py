"""Loading recipes with every registered method's keys known: the recipe schema (:mod:`tuneforge.base.recipe`)
validated against the method registry (:mod:`tuneforge.core.methods`).

This is the door through which commands, applications and tasks read a recipe file, a raw recipe dict, or the
``config.yaml`` of a finished run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tuneforge.base.errors import UserError
from tuneforge.base.integrity import verify_run_files
from tuneforge.base.recipe import Recipe, check_recipe, read_recipe
from tuneforge.core.methods import method_configs


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override (``--set key=value``) and validate a recipe file; raise UserError listing every problem."""
    return read_recipe(path, overrides, method_configs())


def validate_recipe(raw: dict[str, Any], source: Path | str = "recipe", text: str | None = None,
                    overridden: set[tuple[str, ...]] | None = None) -> Recipe:
    """Validate a raw recipe dict into a Recipe, or raise UserError with every problem."""
    return check_recipe(raw, method_configs(), source=source, text=text, overridden=overridden)


def load_run_recipe(run_dir: str | Path) -> Recipe:
    """The recipe a finished (or interrupted) run folder was trained with: its ``config.yaml``.

    Every loader of a run's model (predict, eval, export, serve, generate, a distillation teacher, ``--from``)
    reads the run through here, so this is where the model files are checked against ``artifacts.json``
    (:func:`tuneforge.base.integrity.verify_run_files`; ``--no-verify`` skips it): a changed file is refused
    before anything is loaded."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a tuneforge run folder (no config.yaml); pass the folder `tuneforge train` "
                        "wrote")
    verify_run_files(run_dir)
    return validate_recipe(yaml.safe_load(path.read_text(encoding="utf-8")), source=path)
