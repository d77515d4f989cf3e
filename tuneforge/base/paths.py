"""Where tuneforge keeps what it can recompute: the cache folder (encoded splits, teacher logits, GGUF conversions)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$TUNEFORGE_CACHE_DIR``, else ``~/.cache/tuneforge``."""
    return Path(os.environ.get("TUNEFORGE_CACHE_DIR", Path.home() / ".cache" / "tuneforge"))
