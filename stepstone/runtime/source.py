"""What a project's ``main`` declares, read from its source without importing it.

``stepstone dev`` never imports the user's code (the worker child does), yet it must know, when it starts
serving, whether the Worker has a ``fetch`` entrypoint: then every path the API does not own is the Worker's
and the dashboard moves under ``/cdn-cgi/stepstone/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from stepstone import pysource

_NAMES = frozenset({"Default", "on_fetch"})


def declares_worker(main: Path) -> bool:
    """Whether ``main`` binds ``Default`` (a class, an assignment, an import) or ``on_fetch`` at its top level.

    A file that cannot be read or parsed declares nothing (the worker child reports the real error).
    """
    try:
        tree = pysource.parse(main.read_text(encoding="utf-8"), str(main))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.name in _NAMES:
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id in _NAMES for t in targets):
                return True
        if isinstance(node, ast.ImportFrom | ast.Import) and any(
            (alias.asname or alias.name) in _NAMES for alias in node.names
        ):
            return True
    return False
