"""The version id of a workflow's code.

A workflow's version changes whenever code that can change what it does changes: the module that defines its
class (its ``run()``, the step functions and helpers written beside it), the modules of its base classes, and
every module of the same project those modules use (a module, function or class they import, found in their
globals, whose file lies under the directory of the class's module; followed transitively). Installed packages
(site-packages, the standard library, stepstone) are left out: upgrading a library is not a new workflow version.
The settings the workflow is registered with (class name, script name, limits, concurrency) are part of it too,
since Cloudflare's version carries them.

Code without a source file (a class made in a REPL or by ``exec``) is hashed from its compiled functions instead.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import marshal
import os
import sys
import sysconfig
import types
import uuid
from typing import Final

from stepstone import pysource

NAMESPACE: Final = uuid.UUID("5f1d6a52-3c3e-4d55-9a51-7e0a8a7c2b11")
"""The namespace of stepstone's version ids (UUID 5 of the code's digest)."""

MAX_FILES: Final = 500
"""At most this many project files are read for one version (a guard against walking a huge tree)."""

_LIBRARY_DIRS: Final = tuple(
    os.path.realpath(p) + os.sep
    for p in {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    | {os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
)


def _file_of(obj: object) -> str | None:
    try:
        path = inspect.getsourcefile(obj)  # type: ignore[arg-type]
    except (TypeError, OSError):
        return None
    if path is None or not os.path.isfile(path):
        return None
    return os.path.realpath(path)


def _is_library(path: str) -> bool:
    return path.startswith(_LIBRARY_DIRS) or f"{os.sep}site-packages{os.sep}" in path


def project_files(cls: type) -> list[str]:
    """The source files a version of ``cls`` is made of, its own module's first."""
    own = _file_of(cls)
    if own is None:
        return []
    root = os.path.dirname(own) + os.sep
    files: list[str] = []
    seen: set[str] = set()
    modules = [sys.modules.get(klass.__module__) for klass in cls.__mro__]
    queue = [m for m in modules if m is not None]
    while queue and len(files) < MAX_FILES:
        module = queue.pop(0)
        path = _file_of(module)
        if path is None or path in seen or _is_library(path):
            continue
        seen.add(path)
        if not path.startswith(root) and path != own:
            continue
        files.append(path)
        for value in list(vars(module).values()):
            target = value if isinstance(value, types.ModuleType) else sys.modules.get(getattr(value, "__module__", ""))
            if isinstance(target, types.ModuleType) and target is not module:
                queue.append(target)
        queue += [m for m in (sys.modules.get(n) for n in _imported(path, module)) if m is not None]
    if own in files:
        files.remove(own)
    return [own, *sorted(files)]


def _imported(path: str, module: types.ModuleType) -> list[str]:
    """The names of the modules a source file imports (``from rates import RATE`` names ``rates``, and
    ``rates.RATE`` in case it is a submodule); relative imports resolved against the module's package."""
    try:
        with open(path, "rb") as f:
            tree = pysource.parse(f.read(), path)
    except (OSError, SyntaxError, ValueError):
        return []
    names: list[str] = []
    package = module.__package__ or ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".") if package else []
                parent = ".".join(parts[: len(parts) - node.level + 1]) if len(parts) >= node.level - 1 else ""
                base = ".".join(p for p in (parent, base) if p)
            if base:
                names.append(base)
            names += [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
    return names


def _compiled(cls: type) -> bytes:
    """The class's functions as compiled code, for a class with no source file."""
    parts: list[bytes] = [cls.__qualname__.encode()]
    for name, value in sorted(vars(cls).items()):
        fn = getattr(value, "__func__", value)
        code = getattr(fn, "__code__", None)
        if isinstance(code, types.CodeType):
            parts.append(name.encode() + marshal.dumps(code))
    return b"\0".join(parts)


def code_version(cls: type, settings: str = "") -> str:
    """The version id of ``cls``'s code registered with ``settings`` (a JSON text): the same code and settings
    give the same id in every process, so workers agree on it without asking each other."""
    digest = hashlib.sha256()
    digest.update(f"{cls.__qualname__}\0{settings}\0".encode())
    files = project_files(cls)
    if not files:
        digest.update(_compiled(cls))
    root = os.path.dirname(files[0]) if files else ""
    for path in files:
        try:
            with open(path, "rb") as f:
                content = f.read()
        except OSError:
            continue
        digest.update(os.path.relpath(path, root).encode() + b"\0" + content + b"\0")
    return str(uuid.uuid5(NAMESPACE, digest.hexdigest()))
