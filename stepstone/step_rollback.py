"""Saga rollbacks: ``step.with_rollback`` steps, their undo handlers, and ``step.rollback_all``.

Cloudflare's Python Workflows API (``docs/engine.md``, "Saga rollbacks"): ``@step.with_rollback(name, config)``
declares a step like ``@step.do``; ``@fn.undo`` (or ``@fn.undo(config=...)``) registers its undo handler. Each
time such a step completes (live or replayed) its handler is pushed on the run's undo stack with the step's
output; ``await step.rollback_all(error)`` runs the stack last-in first-out (by the steps' start order).

Every handler runs as a durable step of its own: a ``rollback`` record keyed by its step's name and count,
attempted, retried and timed out like a ``step.do`` (with its own config, else its step's), recorded once
settled and never run again after that, so a replay after a crash (or a second ``rollback_all``) goes on
where the rollback stopped. A handler receives the step context of its step (``ctx``), the error and the
step's output; by default the first failing handler stops the rollback, ``continue_on_error=True`` runs the
rest; the failures are raised together as an ``ExceptionGroup``.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from stepstone.errors import ValidationError
from stepstone.history import RollbackPass
from stepstone.models import step_key
from stepstone.retry import StepConfig
from stepstone.run_state import RunState
from stepstone.step_do import StepCallable, StepContext, StepHost, run_do

ConfigArg = Mapping[str, object] | StepConfig | None
UndoFunction = Callable[..., Any]


@dataclass(slots=True)
class Undo:
    """A completed ``with_rollback`` step's handler, waiting on the undo stack."""

    name: str
    count: int
    seq: int
    """When the step first started (the stack runs the latest-started first)."""
    fn: UndoFunction
    config: StepConfig
    output: Any
    ctx: StepContext
    """The step's own context (name, count, the attempt that succeeded, its resolved config)."""

    @property
    def key(self) -> str:
        """The key of the handler's ``rollback`` record."""
        return step_key("rollback", self.name, self.count)


class RollbackHost(StepHost, Protocol):
    """What a ``with_rollback`` step needs from ``step``: start a step with its undo handler."""

    def call(
        self,
        name: str,
        fn: Callable[..., Any],
        config: ConfigArg,
        kwargs: dict[str, Any] | None = None,
        undo: tuple[UndoFunction, ConfigArg] | None = None,
    ) -> Awaitable[Any]: ...


class RollbackStep(StepCallable):
    """A step declared with ``@step.with_rollback(name, config)``: await it (call it) to run the step.

    Register its undo handler with ``@fn.undo`` or ``@fn.undo(config=...)`` (the handler's own retries and
    timeout; by default the step's). The handler is called as ``undo(error, output)``, or with ``ctx`` too
    when it has a parameter named ``ctx`` (``undo(ctx, error, output)``, or any of them by keyword).
    """

    def __init__(
        self,
        step: RollbackHost,
        name: str,
        fn: Callable[..., Any],
        config: ConfigArg,
        *,
        undo: UndoFunction | None = None,
        undo_config: ConfigArg = None,
        concurrent: bool = False,
        depends: list[StepCallable] | None = None,
    ) -> None:
        super().__init__(step, name, fn, config, concurrent, depends)
        self._host = step
        self._undo_fn: UndoFunction | None = undo
        self._undo_config: ConfigArg = undo_config

    def undo(self, fn: UndoFunction | ConfigArg = None, /, *, config: ConfigArg = None) -> Any:
        """Register the undo handler: ``@fn.undo`` or ``@fn.undo(config={...})``; returns this step."""
        if callable(fn):
            self._set_undo(fn, config)
            return self
        if fn is not None:
            if config is not None:
                raise ValidationError(f'step "{self.name}": undo config given twice (positionally and as config=)')
            config = fn

        def decorator(handler: UndoFunction) -> RollbackStep:
            self._set_undo(handler, config)
            return self

        return decorator

    def _set_undo(self, handler: UndoFunction, config: ConfigArg) -> None:
        if not callable(handler):
            raise ValidationError(f'step "{self.name}": the undo handler must be a function, got {handler!r}')
        self._undo_fn, self._undo_config = handler, config

    def _start(self, kwargs: dict[str, Any]) -> Awaitable[Any]:
        undo = None if self._undo_fn is None else (self._undo_fn, self._undo_config)
        return self._host.call(self.name, self._fn, self._config, kwargs, undo)


async def run_with_undo(
    state: RunState,
    name: str,
    count: int,
    config: StepConfig,
    fn: Callable[..., Any],
    kwargs: dict[str, Any] | None,
    undo_fn: UndoFunction,
    undo_config: StepConfig,
) -> Any:
    """Run a ``with_rollback`` step like ``step.do``; once it has its result, push its handler on the stack."""
    value = await run_do(state, name, count, config, fn, kwargs)
    rec = state.history[step_key("do", name, count)]
    step_config = json.loads(rec.config) if rec.config else config.to_dict()
    ctx = StepContext(max(len(rec.attempts), 1), name, count, step_config)
    state.undo.append(Undo(name, count, rec.seq, undo_fn, undo_config, value, ctx))
    return value


def undo_arguments(fn: UndoFunction, ctx: StepContext, error: Any, output: Any) -> tuple[list[Any], dict[str, Any]]:
    """How to call a handler: positional ``(error, output)`` (Cloudflare's Python form), ``ctx`` where a
    parameter is named so, and keyword-only ``ctx``, ``error``, ``output`` by name (Cloudflare's JS form)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return [error, output], {}
    values = iter((error, output))
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    by_name = {"ctx": ctx, "error": error, "err": error, "output": output, "value": output}
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if p.name == "ctx":
                args.append(ctx)
            else:
                value = next(values, inspect.Parameter.empty)
                if value is inspect.Parameter.empty:
                    break
                args.append(value)
        elif p.kind == p.KEYWORD_ONLY and p.name in by_name:
            kwargs[p.name] = by_name[p.name]
        elif p.kind == p.VAR_KEYWORD:
            kwargs.update({k: v for k, v in (("ctx", ctx), ("error", error), ("output", output)) if k not in kwargs})
    return args, kwargs


def _bound(undo: Undo, error: Any, _attempt: StepContext) -> Callable[[], Any]:
    args, kwargs = undo_arguments(undo.fn, undo.ctx, error, undo.output)
    return functools.partial(undo.fn, *args, **kwargs)


async def rollback_all(state: RunState, error: Any = None, *, continue_on_error: bool = False) -> None:
    """Run the undo stack last-in first-out (see the module docstring).

    Raises:
        RuntimeError: called while a rollback runs (from an undo handler).
        ExceptionGroup: the handlers that failed (after their retries): the first one only, unless
            ``continue_on_error``. Handlers not run stay registered.
    """
    if state.rollback is not None:
        raise RuntimeError("step.rollback_all cannot be called while a rollback is running (from an undo handler)")
    if not isinstance(continue_on_error, bool):
        raise ValidationError(f"rollback_all: continue_on_error must be True or False, got {continue_on_error!r}")
    state.check_open()
    if not state.undo:
        return
    pending = sorted(state.undo, key=lambda u: u.seq, reverse=True)
    state.undo.clear()
    fresh = not any(u.key in state.history for u in pending)
    rollback = RollbackPass(pending[0].key if fresh else None, pending[-1].key, continue_on_error)
    state.rollback = rollback
    failures: list[Exception] = []
    try:
        for i, undo in enumerate(pending):
            try:
                await run_do(
                    state,
                    undo.name,
                    undo.count,
                    undo.config,
                    undo.fn,
                    None,
                    kind="rollback",
                    bind=functools.partial(_bound, undo, error),
                )
            except Exception as exc:
                rollback.failed = True
                failures.append(exc)
                if not continue_on_error:
                    state.undo[:0] = sorted(pending[i + 1 :], key=lambda u: u.seq)
                    break
    finally:
        state.rollback = None
    if failures:
        ran = "; ".join(f"{type(f).__name__}: {f}" for f in failures)
        raise ExceptionGroup(f"rollback failed: {len(failures)} undo handler(s) raised ({ran})", failures)
