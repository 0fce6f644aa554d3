"""The entrypoint classes and the execution context of the Python Workers SDK.

``class Default(WorkerEntrypoint)`` holds the Worker's handlers (``fetch``, ``scheduled``, ``queue``); the runtime
makes one instance per invocation with ``ctx`` (a :class:`Context`) and ``env`` (the bindings and variables).
``WorkflowEntrypoint`` is stepstone's own (:class:`stepstone.WorkflowEntrypoint`), so a workflow class written for
Cloudflare is the class the engine runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from types import SimpleNamespace
from typing import Any, TypeVar

from stepstone.workflow import WorkflowEntrypoint

log = logging.getLogger("stepstone.workers")

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """The ``ctx`` of a handler: ``wait_until`` work outlives the response, as on Cloudflare.

    The runtime waits for that work after answering (it is logged, never surfaced, if it fails).
    """

    def __init__(self, props: Mapping[str, Any] | None = None, exports: Mapping[str, Any] | None = None) -> None:
        self.props: dict[str, Any] = dict(props or {})
        """Properties the caller passed (empty here: no service bindings call in)."""
        self.exports = SimpleNamespace(**dict(exports or {}))
        """The Workflows the project declares in ``exports``, by class name: ``ctx.exports.MyWorkflow.create(...)``
        (Cloudflare's changelog 2026-09-27), the same binding as a ``[[workflows]]`` one."""
        self._pending: set[asyncio.Future[Any]] = set()

    def wait_until(self, awaitable: Awaitable[Any]) -> None:
        """Run ``awaitable`` to its end even after the handler returned."""
        future = asyncio.ensure_future(awaitable)
        self._pending.add(future)
        future.add_done_callback(self._pending.discard)

    waitUntil = wait_until

    def pass_through_on_exception(self) -> None:
        """Accepted for compatibility: there is no origin to fall back to, so an exception is a 500."""

    passThroughOnException = pass_through_on_exception

    async def drain(self) -> None:
        """Wait for every ``wait_until`` awaitable, including ones they add; log their failures."""
        while self._pending:
            done = await asyncio.gather(*list(self._pending), return_exceptions=True)
            for result in done:
                if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                    log.error("ctx.wait_until task failed: %s: %s", type(result).__name__, result, exc_info=result)


class WorkerEntrypoint:
    """Base class of a Worker's handlers: write ``class Default(WorkerEntrypoint)`` with ``async def fetch(self,
    request)``, ``scheduled(self, controller)`` and ``queue(self, batch)``.

    Attributes:
        ctx: the invocation's :class:`Context` (``self.ctx.wait_until(...)``).
        env: the bindings and variables (``self.env.MY_WORKFLOW``, ``self.env.API_KEY``).
    """

    def __init__(self, ctx: Any = None, env: Any = None) -> None:
        self.ctx = ctx
        self.env = env


class DurableObject:
    """Defined so a module that declares a Durable Object imports; stepstone does not run Durable Objects."""

    def __init__(self, ctx: Any = None, env: Any = None) -> None:
        raise NotImplementedError(
            f"{type(self).__name__}: Durable Objects are not supported by stepstone's Worker runtime"
        )


def handler(func: F) -> F:
    """The SDK's decorator for old-style ``on_fetch`` handlers: arguments are already Python objects here."""
    return func


def python_from_rpc(value: Any) -> Any:
    """Identity: values cross no JavaScript boundary here."""
    return value


def python_to_rpc(value: Any) -> Any:
    """Identity: values cross no JavaScript boundary here."""
    return value


def import_from_javascript(module_name: str) -> Any:
    """There is no JavaScript here.

    Raises:
        ImportError: always, naming the module.
    """
    raise ImportError(f"import_from_javascript({module_name!r}): stepstone runs Python only, there is no JavaScript")


# -- the module-level ``env`` and ``wait_until`` of ``from workers import env`` -----------------------------
_process_env: list[Any] = [None]
_invocation: contextvars.ContextVar[Context | None] = contextvars.ContextVar("stepstone_workers_ctx", default=None)


def set_process_env(env: Any) -> None:
    """Make ``env`` what ``from workers import env`` gives (the runtime calls this when it builds the env)."""
    _process_env[0] = env


def current_env() -> Any:
    """The env of the loaded project (``workers.env``)."""
    return _process_env[0]


@contextlib.contextmanager
def invocation(ctx: Context) -> Iterator[None]:
    """Within the block, module-level ``workers.wait_until`` extends ``ctx`` (the runtime wraps each handler)."""
    token = _invocation.set(ctx)
    try:
        yield
    finally:
        _invocation.reset(token)


_detached: set[asyncio.Future[Any]] = set()


def wait_until(awaitable: Awaitable[Any]) -> None:
    """``from workers import wait_until``: extend the current invocation, or run detached outside one."""
    ctx = _invocation.get()
    if ctx is not None:
        ctx.wait_until(awaitable)
        return
    future = asyncio.ensure_future(awaitable)
    _detached.add(future)
    future.add_done_callback(_detached.discard)


@contextlib.contextmanager
def patch_env(values: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None, **more: Any) -> Iterator[None]:
    """Within the block, ``workers.env`` has these values too (restored after)."""
    env = _process_env[0]
    changes = {**dict(values or {}), **more}
    if env is None:
        raise RuntimeError("patch_env: no project env is loaded")
    missing = object()
    saved = {key: getattr(env, key, missing) for key in changes}
    for key, value in changes.items():
        setattr(env, key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is missing:
                delattr(env, key)
            else:
                setattr(env, key, value)


__all__ = [
    "Context",
    "DurableObject",
    "WorkerEntrypoint",
    "WorkflowEntrypoint",
    "current_env",
    "handler",
    "import_from_javascript",
    "invocation",
    "patch_env",
    "python_from_rpc",
    "python_to_rpc",
    "set_process_env",
    "wait_until",
]
