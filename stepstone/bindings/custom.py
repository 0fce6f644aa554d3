"""Workers AI and Vectorize: interfaces a project implements, since neither runs locally.

Name the class in the project file, beside Wrangler's keys::

    [ai]
    binding = "AI"
    implementation = "local_ai:EchoAI"        # module of the project : class

    [[vectorize]]
    binding = "VECTORS"
    index_name = "docs"
    implementation = "local_vectors:MemoryIndex"

The class is built once per process, with the entry's other keys as a dict when its constructor takes an
argument. Without ``implementation`` the binding exists but every use raises
:class:`~stepstone.bindings.errors.BindingNotConfiguredError` saying how to configure it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from stepstone.bindings.config import CustomBindingConfig
from stepstone.bindings.errors import BindingNotConfiguredError
from stepstone.errors import ValidationError


@runtime_checkable
class AIBinding(Protocol):
    """What ``env.AI`` offers a Worker: ``await env.AI.run(model, inputs)``."""

    async def run(self, model: str, inputs: Any, options: Any = None) -> Any:
        """Run ``model`` on ``inputs``; the result is what the model returns on Cloudflare (a dict...)."""
        ...


@runtime_checkable
class VectorizeIndex(Protocol):
    """What ``env.VECTORS`` offers a Worker (the Vectorize index API; implement the methods you use)."""

    async def query(self, vector: Any, options: Any = None) -> Any:
        """``{matches: [{id, score, values?, metadata?}], count}`` for the nearest vectors."""
        ...

    async def upsert(self, vectors: Any) -> Any:
        """Insert or replace vectors ``[{id, values, metadata?}]``."""
        ...


class NotConfigured:
    """The binding of an ``[ai]`` or ``[[vectorize]]`` entry without ``implementation``."""

    def __init__(self, config: CustomBindingConfig) -> None:
        self._config = config

    def __repr__(self) -> str:
        return f"<{self._config.kind} binding {self._config.binding}: not configured>"

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise BindingNotConfiguredError(not_configured_message(self._config))


def not_configured_message(config: CustomBindingConfig) -> str:
    """How to configure the binding, for the error a use of it raises."""
    b = config.binding
    if config.kind == "ai":
        return (
            f"env.{b} is a Workers AI binding, and Workers AI does not run locally: name a class of your project "
            f'that implements it, in the project file: [ai] binding = "{b}", implementation = "my_ai:MyAI" '
            "(a class with async def run(self, model, inputs, options=None)); see docs/workers.md"
        )
    return (
        f"env.{b} is a Vectorize binding, and Vectorize does not run locally: name a class of your project that "
        f'implements it, in the project file: [[vectorize]] binding = "{b}", implementation = '
        '"my_index:MyIndex" (async query, upsert, insert, getByIds, deleteByIds...); see docs/workers.md'
    )


def build_custom(config: CustomBindingConfig, root: Path) -> Any:
    """The configured implementation, built; or a :class:`NotConfigured` stand-in."""
    if not config.implementation:
        return NotConfigured(config)
    module_name, _, attribute = config.implementation.partition(":")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    where = f"{config.kind} binding {config.binding}: implementation {config.implementation!r}"
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ValidationError(f"{where}: cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, attribute, None)
    if factory is None or not callable(factory):
        raise ValidationError(f"{where}: {module_name} has no class {attribute}")
    try:
        takes_argument = bool(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        takes_argument = False
    return factory(dict(config.options)) if takes_argument else factory()


__all__ = ["AIBinding", "NotConfigured", "VectorizeIndex", "build_custom", "not_configured_message"]
