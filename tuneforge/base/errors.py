"""User-facing errors.

A :class:`UserError` is a problem with the user's input (recipe, data, paths) that the user can
fix. The CLI prints its message as one line and exits non-zero, without a traceback. Anything
else is a bug in tuneforge and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """An input problem, explained in one line that names the problem and the fix."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` if none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
