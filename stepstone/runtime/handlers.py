"""The Worker's handlers: finding them in the project's module, and calling them as the Workers runtime does.

The entrypoint is the module's ``Default`` (Cloudflare's rule for Python Workers): a
:class:`~stepstone.workers.WorkerEntrypoint` subclass with ``fetch``, ``scheduled`` and ``queue`` methods, or an
ASGI application (FastAPI, Starlette...) bound to that name. Without a ``Default``, module-level ``on_fetch``,
``on_scheduled`` and ``on_queue`` functions (the SDK's older style) are used. Each invocation gets a new instance
``Default(ctx, env)``, and a handler is called with ``(argument, env, ctx)`` of which it takes what it declares
(``fetch(self)`` and ``scheduled(self, controller, env, ctx)`` both work, as on Cloudflare, whose runtime calls
handlers "relaxed": extra arguments are dropped).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from types import ModuleType
from typing import Any

from stepstone.workers.entrypoints import Context, WorkerEntrypoint, invocation
from stepstone.workers.request import Request
from stepstone.workers.response import Response

log = logging.getLogger("stepstone.runtime")

ENTRYPOINT = "Default"
HANDLERS = ("fetch", "scheduled", "queue")
_OLD_STYLE = {"fetch": "on_fetch", "scheduled": "on_scheduled", "queue": "on_queue"}


class HandlerError(Exception):
    """A handler that cannot be called: missing, or returning the wrong thing (the message says which)."""


def relaxed_call(func: Callable[..., Any], *args: Any) -> Any:
    """Call ``func`` with as many of ``args`` as it takes (all of them if it takes ``*args``)."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return func(*args)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return func(*args)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return func(*args[: len(positional)])


def is_asgi_app(value: object) -> bool:
    """Whether ``value`` looks like an ASGI application (an instance with ``async __call__(scope, receive,
    send)``, or such a function), not a class."""
    if isinstance(value, type) or not callable(value):
        return False
    call = value if inspect.isfunction(value) else getattr(value, "__call__", None)  # noqa: B004
    if call is None:
        return False
    try:
        params = [p for p in inspect.signature(call).parameters.values() if p.kind is not p.VAR_KEYWORD]
    except (TypeError, ValueError):
        return False
    return len(params) == 3 or any(p.kind is p.VAR_POSITIONAL for p in params)


class WorkerRuntime:
    """The Worker of one loaded project: its handlers, called with fresh instances over one ``env``.

    Args:
        module: the project's ``main`` module.
        env: the bindings and variables (``engine.env``).
        exports: the Workflow bindings of the workflows declared in ``exports``, by class name (``ctx.exports``).
    """

    def __init__(self, module: ModuleType, env: Any, exports: Mapping[str, Any] | None = None) -> None:
        self.module = module
        self.env = env
        self.exports = dict(exports or {})
        entry = getattr(module, ENTRYPOINT, None)
        self.entrypoint: type[WorkerEntrypoint] | None = None
        self.asgi_app: Any = None
        if isinstance(entry, type) and issubclass(entry, WorkerEntrypoint):
            self.entrypoint = entry
        elif entry is not None and is_asgi_app(entry):
            self.asgi_app = entry
        elif entry is not None:
            where = getattr(module, "__file__", None) or module.__name__
            raise HandlerError(
                f"{where}: {ENTRYPOINT} must be a WorkerEntrypoint subclass or an ASGI application, got {entry!r}"
            )

    @property
    def name(self) -> str:
        """What serves: ``Default`` (or its ASGI app's type), ``on_fetch``..., or ``nothing``."""
        if self.entrypoint is not None:
            return self.entrypoint.__name__
        if self.asgi_app is not None:
            return f"{ENTRYPOINT} (ASGI {type(self.asgi_app).__name__})"
        found = [_OLD_STYLE[h] for h in HANDLERS if callable(getattr(self.module, _OLD_STYLE[h], None))]
        return ", ".join(found) or "nothing"

    def has_handler(self, name: str) -> bool:
        """Whether the Worker handles ``fetch``, ``scheduled`` or ``queue``."""
        if name == "fetch" and self.asgi_app is not None:
            return True
        if self.entrypoint is not None:
            return callable(getattr(self.entrypoint, name, None))
        if self.asgi_app is not None:
            return False
        return callable(getattr(self.module, _OLD_STYLE.get(name, ""), None))

    def handlers(self) -> list[str]:
        """The handlers the Worker has, in ``fetch, scheduled, queue`` order."""
        return [h for h in HANDLERS if self.has_handler(h)]

    def context(self) -> Context:
        """A fresh ``ctx`` for one invocation, with ``ctx.exports``."""
        return Context(exports=self.exports)

    async def invoke(self, name: str, argument: Any, ctx: Context | None = None) -> Any:
        """Call handler ``name`` with ``argument`` on a new instance; ``ctx``'s ``wait_until`` work is left to the
        caller to drain (:meth:`Context.drain`) when given, drained here when not.

        Raises:
            HandlerError: the Worker has no such handler.
        """
        own = ctx is None
        ctx = ctx or self.context()
        func = self._handler(name, ctx)
        with invocation(ctx):
            result = relaxed_call(func, argument, self.env, ctx)
            if inspect.isawaitable(result):
                result = await result
        if own:
            await ctx.drain()
        return result

    def _handler(self, name: str, ctx: Context) -> Callable[..., Any]:
        if self.entrypoint is not None:
            method = getattr(self.entrypoint, name, None)
            if callable(method):
                instance = self.entrypoint(ctx, self.env)
                bound: Callable[..., Any] = getattr(instance, name)
                return bound
        elif self.asgi_app is None:
            func = getattr(self.module, _OLD_STYLE.get(name, ""), None)
            if callable(func):
                return func  # type: ignore[no-any-return]
        raise HandlerError(f"the Worker has no {name} handler ({ENTRYPOINT}.{name} is not defined)")

    async def fetch(self, request: Request, ctx: Context) -> Response:
        """Run the ``fetch`` handler (not for an ASGI ``Default``: serve that app directly).

        Raises:
            HandlerError: no ``fetch`` handler, or it returned something other than a ``Response``.
        """
        result = await self.invoke("fetch", request, ctx)
        if not isinstance(result, Response):
            raise HandlerError(
                f"{self.name}.fetch returned {type(result).__name__}, not a Response (from workers import Response)"
            )
        return result

    async def scheduled(self, controller: Any) -> None:
        """Run the ``scheduled`` handler with a :class:`~stepstone.runtime.scheduled.ScheduledController`."""
        await self.invoke("scheduled", controller)

    async def queue(self, batch: Any) -> None:
        """Run the ``queue`` handler with a message batch (the queue consumers of :mod:`stepstone.bindings` call
        this); an exception propagates, so the consumer retries the batch's unacknowledged messages."""
        await self.invoke("queue", batch)


Deliver = Callable[[Any], Awaitable[None]]
"""What a queue consumer calls with each batch: :meth:`WorkerRuntime.queue`."""
