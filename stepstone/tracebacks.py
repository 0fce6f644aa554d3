"""The Python traceback kept with a failed attempt or an errored instance: the user's frames, engine frames trimmed.

A failure inside a step passes through the engine (the attempt loop, the timeout, the thread pool) before it is
caught; those frames say nothing about the user's bug. :func:`format_failure` drops the frames of stepstone's own
modules and of asyncio/concurrent.futures/threading, noting how many it hid, keeps chained exceptions
(``raise ... from``), and caps the text: past ``limit`` characters the middle goes, so the first frames (where
the user's code begins) and the last ones with the exception line stay.
"""

from __future__ import annotations

import os
import traceback
from typing import Final

from stepstone.text import storable

LIMIT: Final = 4000
"""Characters kept per traceback (an attempt's; an instance keeps twice that)."""
_ENGINE_DIRS: Final = (
    os.path.dirname(os.path.abspath(__file__)) + os.sep,  # the stepstone package
    os.path.dirname(os.path.abspath(os.__file__)) + os.sep + "asyncio" + os.sep,
    os.path.dirname(os.path.abspath(os.__file__)) + os.sep + "concurrent" + os.sep,
)
_ENGINE_FILES: Final = frozenset(
    {
        os.path.join(os.path.dirname(os.path.abspath(os.__file__)), name)
        for name in ("threading.py", "contextlib.py", "functools.py")
    }
)


def _engine(filename: str) -> bool:
    path = os.path.abspath(filename)
    return path.startswith(_ENGINE_DIRS) or path in _ENGINE_FILES


REMOTE = "_stepstone_traceback"
"""The attribute holding the traceback of an exception rebuilt from another process (already trimmed)."""


def _trim(te: traceback.TracebackException, seen: set[int]) -> None:
    if id(te) in seen:
        return
    seen.add(id(te))
    kept = [f for f in te.stack if not _engine(f.filename)]
    hidden = len(te.stack) - len(kept)
    te.stack = traceback.StackSummary.from_list(kept)
    if hidden:
        te.__notes__ = [*(getattr(te, "__notes__", None) or []), f"({hidden} stepstone frames hidden)"]
    for chained in (te.__cause__, te.__context__):
        if chained is not None:
            _trim(chained, seen)


def format_failure(exc: BaseException, *, limit: int = LIMIT) -> str | None:
    """The traceback of ``exc`` with engine frames left out, at most ``limit`` characters; None when no frame
    of it (or of an exception it chains) is the user's: the error's name and message then say it all. An
    exception raised in a step's process (``isolation="process"``) brings the traceback it had there."""
    remote = getattr(exc, REMOTE, None)
    if isinstance(remote, str):
        return remote[:limit]
    try:
        te = traceback.TracebackException.from_exception(exc, capture_locals=False)
        if _user_frames(te, set()) == 0:
            return None
        _trim(te, set())
        text = storable("".join(te.format()))  # a lone surrogate or a NUL in a message is written out
    except Exception:  # formatting must never be what fails a run
        return None
    if len(text) <= limit:
        return text
    marker = f"\n... ({len(text) - limit} characters cut) ...\n"
    head = (limit - len(marker)) // 2
    tail = limit - len(marker) - head
    return text[:head] + marker + text[-tail:]


def _user_frames(te: traceback.TracebackException, seen: set[int]) -> int:
    if id(te) in seen:
        return 0
    seen.add(id(te))
    count = sum(1 for f in te.stack if not _engine(f.filename))
    for chained in (te.__cause__, te.__context__):
        if chained is not None:
            count += _user_frames(chained, seen)
    return count
