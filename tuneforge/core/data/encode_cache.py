"""Tokenize once: encoded splits are cached on disk, keyed by a hash of the texts, labels, max_length
and the tokenizer itself, so a second run (or a compare/search trial) on the same data skips tokenization.

The cache lives in ``$TUNEFORGE_CACHE_DIR`` (default ``~/.cache/tuneforge``)/encoded as ``.npz`` files (no
pickle). A corrupt or unreadable entry is ignored and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from tuneforge.base.paths import cache_root
from tuneforge.core.data.batching import EncodedSplit, encode_split
from tuneforge.core.data.splits import Split


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of everything that decides how the tokenizer splits text."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Truncation/padding state is left on the backend by earlier calls; it is not part of the vocabulary.
        state = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:
        digest.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    digest.update(repr(tokenizer.special_tokens_map).encode())
    return digest.hexdigest()


def split_key(split: Split, max_length: int, fingerprint: str) -> str:
    digest = hashlib.sha256(f"{max_length}\0{fingerprint}\0".encode())
    for text in split.texts:
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    for text in split.text_pairs or []:
        digest.update(b"\1" + text.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(np.asarray(split.labels, dtype=np.int64).tobytes())
    return digest.hexdigest()[:32]


def _pack(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    flat = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(lengths.sum()))
    return flat, lengths


def _unpack(flat: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    ends = np.cumsum(lengths)
    return [flat[end - length:end].tolist() for end, length in zip(ends, lengths)]


def encode_split_cached(tokenizer, split: Split, max_length: int, cache_dir: Path | None = None) -> EncodedSplit:
    """``encode_split`` with an on-disk cache; returns the same EncodedSplit either way."""
    folder = (cache_dir or cache_root()) / "encoded"
    path = folder / f"{split_key(split, max_length, tokenizer_fingerprint(tokenizer))}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                token_types = (_unpack(stored["token_type_ids"], stored["lengths"])
                               if "token_type_ids" in stored.files else None)
                return EncodedSplit(input_ids=_unpack(stored["input_ids"], stored["lengths"]),
                                    token_type_ids=token_types, labels=list(split.labels))
        except (OSError, ValueError, KeyError):
            pass  # unreadable entry: encode again and overwrite it
    encoded = encode_split(tokenizer, split, max_length)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        flat, lengths = _pack(encoded.input_ids)
        arrays = {"input_ids": flat, "lengths": lengths}
        if encoded.token_type_ids is not None:
            arrays["token_type_ids"] = _pack(encoded.token_type_ids)[0]
        handle, temporary = tempfile.mkstemp(dir=folder, suffix=".npz.tmp")
        with os.fdopen(handle, "wb") as stream:
            np.savez(stream, **arrays)
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only or full cache folder must not stop training
    return encoded
