"""Keeping library chatter (weight-loading bars, expected warnings) out of the user's output."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


def quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, deprecation notices) out of the user's output."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*requires_grad=True to a scalar.*")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Transformers' warnings off for the block, then back to what they were.

    Used around loads whose warnings are expected and would only alarm the user: a new classifier head
    "newly initialized", a replaced head "mismatched", a pooler the checkpoint does not carry.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
