"""``step``: the object ``run()`` receives, with ``do``, ``sleep``, ``sleep_until`` and ``wait_for_event``.

Every method assigns its occurrence counter synchronously, at call time, so concurrent steps started with
``asyncio.gather`` get the same keys on every replay. A step found in the history returns its stored result
(or re-raises its stored error) without running.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, overload

from stepstone import codec
from stepstone.durations import Duration, to_millis
from stepstone.errors import ValidationError, WorkflowTimeoutError
from stepstone.limits import (
    validate_event_timeout_ms,
    validate_event_type,
    validate_instance_id,
    validate_sleep_ms,
    validate_step_name,
)
from stepstone.models import StepRecord, step_key
from stepstone.retry import StepConfig, resolve_step_config
from stepstone.run_state import RunState, WakeReason
from stepstone.step_child import run_child
from stepstone.step_do import StepCallable, run_do
from stepstone.step_rollback import RollbackStep, UndoFunction, rollback_all, run_with_undo
from stepstone.workflow import WorkflowStepEvent

StepFunction = Callable[..., Any]
ConfigArg = Mapping[str, object] | StepConfig | None


class WorkflowStep:
    """The ``step`` argument of ``run(event, step)``."""

    def __init__(self, state: RunState) -> None:
        self._state = state
        self._declared: dict[str, StepCallable] = {}

    # -- step.do ----------------------------------------------------------------------------------------
    @overload
    def do(self, name: str, fn: StepFunction, /, *, config: ConfigArg = None) -> Awaitable[Any]: ...

    @overload
    def do(self, name: str, config: ConfigArg, fn: StepFunction, /) -> Awaitable[Any]: ...

    @overload
    def do(
        self,
        name: str | None = None,
        /,
        *,
        config: ConfigArg = None,
        concurrent: bool = False,
        depends: list[StepCallable] | None = None,
    ) -> Callable[[StepFunction], StepCallable]: ...

    @overload
    def do(self, fn: StepFunction, /) -> StepCallable: ...

    def do(
        self,
        name: str | StepFunction | None = None,
        a: Any = None,
        b: Any = None,
        /,
        *,
        config: ConfigArg = None,
        concurrent: bool = False,
        depends: list[StepCallable] | None = None,
    ) -> Any:
        """Run a durable, retried, cached step, or declare one with the decorator form.

        Forms: ``await step.do(name, fn)``, ``await step.do(name, config, fn)``,
        ``await step.do(name, fn, config=...)``, and the decorator ``@step.do("name", config=...)``
        (name defaults to the function's name) which returns a callable to await.
        """
        if callable(name) and a is None and b is None:
            return self._declare(name.__name__, name, config, concurrent, depends)
        if name is not None and not isinstance(name, str):
            raise ValidationError(f"step.do: the step name must be a string, got {type(name).__name__}")
        if a is None and b is None:

            def decorator(fn: StepFunction) -> StepCallable:
                return self._declare(name if name is not None else fn.__name__, fn, config, concurrent, depends)

            return decorator
        if b is None:
            if not callable(a):
                raise ValidationError(f'Step "{name}" requires a callback function')
            fn, cfg = a, config
        else:
            if not callable(b):
                raise ValidationError(f'Step "{name}" requires a callback function')
            if config is not None:
                raise ValidationError(f'step "{name}": config given twice (positionally and as config=)')
            fn, cfg = b, a
        assert name is not None
        return self.call(name, fn, cfg)

    def call(
        self,
        name: str,
        fn: StepFunction,
        config: ConfigArg,
        kwargs: dict[str, Any] | None = None,
        undo: tuple[UndoFunction, ConfigArg] | None = None,
    ) -> Awaitable[Any]:
        """Start a step now (counter assigned at once); await the result. With ``undo`` (a handler and its
        config, None: the step's), the step's completion registers the handler for ``rollback_all``."""
        state = self._state
        state.check_open()
        validate_step_name(name, state.limits)
        resolved = resolve_step_config(config, step_name=name, max_retries=state.limits.retries_max)
        undo_config = resolved
        if undo is not None and undo[1] is not None:
            undo_config = resolve_step_config(undo[1], step_name=name, max_retries=state.limits.retries_max)
        state.count_do_call()
        count = state.next_count("do-" + name)
        state.check_live()
        if undo is None:
            return state.judged(run_do, state, name, count, resolved, fn, kwargs)
        return state.judged(run_with_undo, state, name, count, resolved, fn, kwargs, undo[0], undo_config)

    # -- saga rollbacks -----------------------------------------------------------------------------------
    def with_rollback(
        self,
        name: str,
        config: ConfigArg = None,
        *,
        undo: UndoFunction | None = None,
        undo_config: ConfigArg = None,
        concurrent: bool = False,
        depends: list[StepCallable] | None = None,
    ) -> Callable[[StepFunction], RollbackStep]:
        """Declare a step with an undo handler (Cloudflare's Python saga API): a decorator like ``@step.do``.

        ``@step.with_rollback("charge", config)`` over the step function, then ``@charge.undo`` (or
        ``@charge.undo(config={...})``: the handler's own retries and timeout) over its undo handler, or
        ``undo=``/``undo_config=`` here. Once the step completes, ``await step.rollback_all(error)`` runs its
        handler as ``undo(error, output)`` (``ctx`` too when a parameter is named so), last-in first-out.
        """
        if not isinstance(name, str):
            raise ValidationError(f"step.with_rollback: the step name must be a string, got {type(name).__name__}")
        validate_step_name(name, self._state.limits)

        def decorator(fn: StepFunction) -> RollbackStep:
            declared = RollbackStep(
                self, name, fn, config, undo=undo, undo_config=undo_config, concurrent=concurrent, depends=depends
            )
            self._declared[name] = declared
            return declared

        return decorator

    async def rollback_all(self, error: Any = None, *, continue_on_error: bool = False) -> None:
        """Run the undo handlers of the completed ``with_rollback`` steps, last-in first-out, each a durable
        step (recorded, retried, never run twice once recorded).

        Args:
            error: passed to each handler (typically the exception being handled).
            continue_on_error: run the remaining handlers after one fails (default: stop at the first).

        Raises:
            ExceptionGroup: the handlers that failed after their retries.
            RuntimeError: called from an undo handler, while a rollback runs.
        """
        await rollback_all(self._state, error, continue_on_error=continue_on_error)

    def _declare(
        self,
        name: str,
        fn: StepFunction,
        config: ConfigArg,
        concurrent: bool,
        depends: list[StepCallable] | None,
    ) -> StepCallable:
        declared = StepCallable(self, name, fn, config, concurrent, depends)
        self._declared[name] = declared
        return declared

    def declared(self, name: str) -> StepCallable | None:
        """A step declared with the decorator form in this run, by name."""
        return self._declared.get(name)

    # -- step.sleep / sleep_until -------------------------------------------------------------------------
    def sleep(self, name: str, duration: Duration) -> Awaitable[None]:
        """Hibernate for ``duration`` (ms number, ``"<n> <unit>"`` or ``timedelta``); at most 365 days."""
        state = self._state
        state.check_open()
        validate_step_name(name, state.limits)
        ms = to_millis(duration, what=f'sleep "{name}"')
        validate_sleep_ms(ms, state.limits, name=name)
        extra = str(int(ms)) if ms == int(ms) else repr(ms)
        count = state.next_count("sleep-" + name + extra, name)
        state.check_live()
        return state.judged(self._sleep, name, count, extra, ms / 1000)

    def sleep_until(self, name: str, when: datetime | float | int) -> Awaitable[None]:
        """Hibernate until ``when``: an aware ``datetime`` (naive means UTC) or epoch milliseconds."""
        state = self._state
        state.check_open()
        validate_step_name(name, state.limits)
        if isinstance(when, datetime):
            target = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
        elif isinstance(when, int | float) and not isinstance(when, bool):
            target = float(when) / 1000
        else:
            raise ValidationError(
                f'sleep_until "{name}": expected a datetime or epoch milliseconds, got {type(when).__name__}'
            )
        remaining_ms = (target - state.clock.now()) * 1000
        if remaining_ms > 0:
            validate_sleep_ms(remaining_ms, state.limits, name=name)
        extra = f"@{int(target * 1000)}"
        count = state.next_count("sleep-" + name + extra, name)
        state.check_live()
        return state.judged(self._sleep, name, count, extra, None, until=target)

    async def _sleep(
        self, name: str, count: int, extra: str, seconds: float | None, until: float | None = None
    ) -> None:
        state = self._state
        key = step_key("sleep", name, count, extra)
        rec = state.history.get(key)
        now = state.clock.now()
        if rec is not None and rec.status == "success":
            return
        new = rec is None
        if rec is None:
            wake = until if until is not None else now + (seconds or 0.0)
            if state.test_hooks is not None and state.test_hooks.skip_sleep(state, name, count):
                wake = now
            rec = StepRecord(key, "sleep", name, count, state.next_seq(), "waiting", now, wake_at=wake)
            state.history[key] = rec
        assert rec.wake_at is not None
        if now < rec.wake_at:
            if new:  # a pending sleep replayed from history is already stored as it is
                await state.write(rec, durable=False)
            reason = WakeReason("sleep", f"{name}-{count}", rec.wake_at)
            if rec.wake_at - now > state.inprocess_wait_s:
                raise state.suspend(reason)
            await state.wait_in_process(reason)
        rec.status, rec.ended_at = "success", rec.wake_at
        await state.write(rec, durable=False)

    # -- step.wait_for_event ------------------------------------------------------------------------------
    def wait_for_event(
        self,
        name: str,
        event_type: str | Mapping[str, object] | None = None,
        /,
        timeout: Duration | None = None,
        *,
        type: str | None = None,
    ) -> Awaitable[WorkflowStepEvent]:
        """Wait for an event of ``event_type`` sent to this instance, at most ``timeout`` (default 24 hours).

        Forms: ``wait_for_event(name, "approval", timeout="1 hour")``, ``wait_for_event(name, type=...)`` and
        Cloudflare's options dict ``wait_for_event(name, {"type": "approval", "timeout": "1 hour"})``.

        Raises:
            WorkflowTimeoutError: no event arrived in time (durable: replays raise it again).
        """
        state = self._state
        state.check_open()
        validate_step_name(name, state.limits)
        if isinstance(event_type, Mapping):
            if type is not None or timeout is not None:
                raise ValidationError(f'wait_for_event "{name}": give the options dict or type=/timeout=, not both')
            unknown = sorted(str(k) for k in event_type if k not in ("type", "timeout"))
            if unknown:
                hint = " (the event type is 'type')" if "event" in unknown else ""
                raise ValidationError(
                    f'wait_for_event "{name}": unknown option {unknown[0]!r}{hint}: expected type, timeout'
                )
            options = event_type
            event_type = None
            type = options.get("type")  # type: ignore[assignment]  # validated below
            timeout = options.get("timeout")  # type: ignore[assignment]
        if event_type is not None and type is not None and event_type != type:
            raise ValidationError(f'wait_for_event "{name}": event type given twice ({event_type!r}, {type!r})')
        kind = event_type if event_type is not None else type
        if kind is None:
            raise ValidationError(f'wait_for_event "{name}": an event type is required')
        validate_event_type(kind, state.limits)
        if timeout is None:
            timeout = "24 hours"
        if isinstance(timeout, bool) or not isinstance(timeout, int | float | str | timedelta):
            raise ValidationError(f'wait_for_event "{name}": timeout {timeout!r} is invalid: expected a duration')
        ms = to_millis(timeout, what=f'wait_for_event "{name}" timeout')
        validate_event_timeout_ms(ms, state.limits, name=name)
        count = state.next_count("waitForEvent-" + name)
        state.check_live()
        return state.judged(self._wait, name, count, kind, ms)

    # -- step.run_workflow -------------------------------------------------------------------------------
    def run_workflow(
        self,
        workflow: str,
        params: Any = None,
        *,
        id: str | None = None,
        config: Mapping[str, object] | None = None,
    ) -> Awaitable[Any]:
        """Start an instance of ``workflow`` (of this instance's account) and hibernate until it finishes.

        The child is created once (``id``, or ``<this id>-<workflow>-<n>``, the same on every replay) and linked
        to this instance; this instance holds no coroutine while it runs. Returns the child's output.

        Args:
            workflow: the child workflow's name (registered with a worker on this database).
            params: the child's params.
            id: the child's instance id; by default derived from this instance's id and the call.
            config: ``{"timeout": duration}`` (default: wait as long as it takes) and
                ``{"terminate_with_parent": bool}`` (default True: terminating this instance terminates the child).

        Raises:
            NonRetryableError: the child errored (with its error's name and message), was terminated or deleted
                (``ChildWorkflowError``), or the id is an instance this one did not start.
            WorkflowTimeoutError: ``timeout`` passed first (the child keeps running).
        """
        state = self._state
        state.check_open()
        validate_step_name(workflow, state.limits, what="run_workflow workflow name")
        if not isinstance(workflow, str) or not workflow:
            raise ValidationError(f"run_workflow: the workflow name must be a non-empty string, got {workflow!r}")
        if id is not None:
            validate_instance_id(id, state.limits)
        options = dict(config or {})
        unknown = sorted(str(k) for k in options if k not in ("timeout", "terminate_with_parent"))
        if unknown:
            raise ValidationError(
                f'run_workflow "{workflow}": unknown config key {unknown[0]!r}: expected timeout, terminate_with_parent'
            )
        cascade = options.get("terminate_with_parent", True)
        if not isinstance(cascade, bool):
            raise ValidationError(f'run_workflow "{workflow}": terminate_with_parent {cascade!r} must be True or False')
        timeout_ms: float | None = None
        raw = options.get("timeout")
        if raw is not None:
            if isinstance(raw, bool) or not isinstance(raw, int | float | str | timedelta):
                raise ValidationError(f'run_workflow "{workflow}": timeout {raw!r} is invalid: expected a duration')
            timeout_ms = to_millis(raw, what=f'run_workflow "{workflow}" timeout')
            if timeout_ms <= 0:
                raise ValidationError(f'run_workflow "{workflow}": timeout {raw!r} must be above zero')
        codec.encode(params, what=f'params of the child of run_workflow "{workflow}"')
        count = state.next_count("waitForEvent-" + workflow)
        state.check_live()
        return state.judged(
            run_child,
            state,
            workflow,
            count,
            workflow=workflow,
            params={} if params is None else params,
            instance_id=id,
            timeout_ms=timeout_ms,
            terminate_with_parent=cascade,
        )

    async def _wait(self, name: str, count: int, event_type: str, ms: float) -> WorkflowStepEvent:
        state = self._state
        key = step_key("wait", name, count)
        rec = state.history.get(key)
        if rec is not None and rec.status == "success":
            return _event_from_result(rec.result)
        if rec is not None and rec.status == "timeout":
            raise WorkflowTimeoutError(rec.error_message or f"Execution timed out after {int(ms)}ms")
        now = state.clock.now()
        new = rec is None
        if rec is None:
            rec = StepRecord(
                key,
                "wait",
                name,
                count,
                state.next_seq(),
                "waiting",
                now,
                wake_at=now + ms / 1000,
                event_type=event_type,
            )
            state.history[key] = rec
        hooks = state.test_hooks
        if hooks is not None and hooks.event_timeout(state, name, count):
            rec.wake_at = now
        elif hooks is not None and (mocked := hooks.mocked_event(state, event_type)) is not None:
            rec.status, rec.ended_at = "success", now
            rec.result = _event_result(event_type, now, codec.encode(mocked[0], what=f'mocked event "{event_type}"'))
            await state.write(rec)
            return _event_from_result(rec.result)
        event = state.take_event(event_type)
        if event is not None:
            rec.status, rec.ended_at = "success", now
            rec.result = _event_result(event_type, event.received_at, event.payload)
            await state.consume(rec, event.pk)
            return _event_from_result(rec.result)
        assert rec.wake_at is not None
        if now >= rec.wake_at:
            rec.status, rec.ended_at = "timeout", now
            rec.error_name = "WorkflowTimeoutError"
            rec.error_message = f"Execution timed out after {int(ms)}ms"
            await state.write(rec)
            raise WorkflowTimeoutError(rec.error_message)
        if new:  # a pending wait replayed from history is already stored as it is
            await state.write(rec, durable=False)
        raise state.suspend(WakeReason("waitForEvent", f"{name}-{count}", rec.wake_at, event_type))


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _event_result(event_type: str, received_at: float, payload: str) -> str:
    """A wait step's stored result: the event's type, when it arrived, and its (encoded) payload."""
    return (
        f'{{"type":{json.dumps(event_type)},"timestamp":{{"$datetime":'
        f'{json.dumps(_iso(received_at))}}},"payload":{payload}}}'
    )


def _event_from_result(result: str | None) -> WorkflowStepEvent:
    data = codec.decode(result or "null")
    if not isinstance(data, dict):  # pragma: no cover - written by us
        raise ValidationError("corrupt wait_for_event result")
    ts = data.get("timestamp")
    return WorkflowStepEvent(
        payload=data.get("payload"),
        type=str(data.get("type")),
        timestamp=ts if isinstance(ts, datetime) else datetime.now(UTC),
    )
