"""Parsing Python source safely from any thread: ``ast.parse`` behind one lock, retried once on CPython's race.

CPython 3.11 keeps the AST converter's recursion counter in interpreter-wide state, so a parse that starts while
another one converts (in another thread, or in this one: a garbage collection inside the conversion runs a
finalizer that formats a traceback, and 3.11's traceback module parses source for its carets) fails with
``SystemError: AST constructor recursion depth mismatch`` (CPython gh-106905, fixed in 3.12). stepstone parses
user code when a workflow is registered (its version and diagram) and when a Worker project is loaded; every
such parse goes through here.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.RLock()  # re-entrant: a parse inside a parse (a finalizer formatting a traceback) in one thread


def parse(source: str | bytes, filename: str = "<unknown>") -> ast.Module:
    """``ast.parse(source, filename)``, serialized, and retried once if another parser raced it."""
    with _LOCK:
        try:
            return ast.parse(source, filename=filename)
        except SystemError:  # a parse outside stepstone's lock (a test runner's, a user's) raced this one
            return ast.parse(source, filename=filename)
