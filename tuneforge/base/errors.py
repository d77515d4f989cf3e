"""User-facing errors.

A :class:`UserError` is a problem with the user's input (recipe, data, paths) that the user can
fix. The CLI prints its message as one line and exits non-zero, without a traceback. Anything
else is a bug in tuneforge and keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
import re
from collections.abc import Iterable

# A write refused because the disk, the user's quota or the process's file-size limit (ulimit -f) is full.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class UserError(Exception):
    """An input problem, explained in one line that names the problem and the fix."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` if none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused for lack of space: an OSError, or a library's error that carries the
    OS error's number in its text (safetensors: "I/O error: No space left on device (os error 28)")."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno in DISK_FULL_ERRNOS
    found = re.search(r"os error (\d+)", str(exc))
    return found is not None and int(found.group(1)) in DISK_FULL_ERRNOS


def disk_full_message(exc: BaseException, then: str = "run the command again") -> str:
    """One line for a write refused for lack of space: what failed and what to do (``then``: the next step)."""
    what = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
    where = f" writing {exc.filename}" if isinstance(exc, OSError) and exc.filename else ""
    return f"the disk is full{where} ({what}); free some space (or raise the file-size limit, ulimit -f), then {then}"
