"""Make ``import workers`` (and the SDK's top-level ``asgi``) resolve to :mod:`stepstone.workers`.

A meta-path finder, installed first on ``sys.meta_path`` by the project loader, answers for ``workers`` and
``workers.<sub>`` with the module objects of ``stepstone.workers`` and its submodules, so
``workers.workflows.NonRetryableError is stepstone.NonRetryableError``. It answers for ``asgi`` only when no
installed distribution provides that name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

_PUBLIC_SUBMODULES = frozenset({"workflows", "asgi"})


class _AliasLoader(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """The target ran when it was imported under its own name; importlib gave it the alias's spec, so give
        its own back (``importlib.reload`` and pickling read it)."""
        own = module.__spec__.loader_state if module.__spec__ is not None else None
        if own is not None:
            module.__spec__ = own


class WorkersFinder(importlib.abc.MetaPathFinder):
    """Finds ``workers``, ``workers.workflows``, ``workers.asgi`` and (if nothing else does) ``asgi``."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "workers":
            return self._spec(fullname, "stepstone.workers", package=True)
        if fullname.startswith("workers.") and fullname[len("workers.") :] in _PUBLIC_SUBMODULES:
            return self._spec(fullname, "stepstone." + fullname, package=False)
        if fullname == "asgi" and path is None and not self._elsewhere(fullname):
            return self._spec(fullname, "stepstone.workers.asgi", package=False)
        return None

    def _elsewhere(self, fullname: str) -> bool:
        return importlib.machinery.PathFinder.find_spec(fullname) is not None

    @staticmethod
    def _spec(fullname: str, target: str, *, package: bool) -> importlib.machinery.ModuleSpec:
        module = importlib.import_module(target)
        spec = importlib.machinery.ModuleSpec(fullname, _AliasLoader(target), is_package=package)
        if package:
            spec.submodule_search_locations = []  # submodules come from this finder, never from the directory
        spec.has_location = False
        # The module object is shared: keep its own spec (importlib sets __spec__ on what create_module returns).
        spec.loader_state = module.__spec__
        return spec


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once). A ``workers`` module imported before (the PyPI project
    of that name) is replaced in ``sys.modules``: a Worker's ``workers`` is the runtime's, as on Cloudflare."""
    if not any(isinstance(f, WorkersFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, WorkersFinder())
    import stepstone.workers as package

    for name in [n for n in sys.modules if n == "workers" or n.startswith("workers.")]:
        current = sys.modules[name]
        if current is not package and not getattr(current, "__name__", "").startswith("stepstone.workers"):
            del sys.modules[name]


__all__ = ["WorkersFinder", "install"]
