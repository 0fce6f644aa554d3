"""``step.do``: the attempt loop with retries, per-attempt timeouts and durable results, and the decorator form.

A result is encoded, written durably, then decoded and returned, so the live call returns exactly what a
replay would. A failure after the last retry is stored with its class and re-raised on every replay.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, Protocol

from stepstone import typed
from stepstone.durations import to_millis
from stepstone.errors import (
    LimitExceededError,
    NonRetryableError,
    SerializationError,
    StepFailedError,
    ValidationError,
    WorkflowFatalError,
    is_non_retryable,
)
from stepstone.models import Attempt, StepKind, StepRecord, step_key
from stepstone.retry import DEFAULT_STEP_CONFIG, StepConfig, retry_delay_ms, will_retry
from stepstone.run_state import RunState, WakeReason
from stepstone.step_blobs import StepOutputError, decode_result, store_result
from stepstone.step_call import AttemptSlot, call_step, mark_start_later
from stepstone.step_threads import Job
from stepstone.text import error_text, storable
from stepstone.tracebacks import format_failure


class StepHost(Protocol):
    """What a declared step needs from ``step``: start a step, and find an earlier declared one."""

    def call(
        self,
        name: str,
        fn: Callable[..., Any],
        config: Mapping[str, object] | StepConfig | None,
        kwargs: dict[str, Any] | None = None,
    ) -> Awaitable[Any]: ...

    def declared(self, name: str) -> StepCallable | None: ...


log = logging.getLogger("stepstone.executor")

DELAY_FN_TIMEOUT_S = 5.0


class StepContext:
    """What a step function receives as ``ctx``: ``attempt`` (1-based), ``step`` (name, count), ``config``.

    Both attribute access and Cloudflare's dict access (``ctx["attempt"]``) work.
    """

    __slots__ = ("attempt", "config", "step")

    def __init__(self, attempt: int, name: str, count: int, config: dict[str, object]) -> None:
        self.attempt = attempt
        self.step = {"name": name, "count": count}
        self.config = config

    def __getitem__(self, key: str) -> object:
        if key not in self.__slots__:
            raise KeyError(key)
        return getattr(self, key)

    def __repr__(self) -> str:
        return f"StepContext(attempt={self.attempt}, step={self.step}, config={self.config})"


@functools.lru_cache(maxsize=4096)
def _arity(code: object, fn: Callable[..., Any]) -> int:
    # A function takes ctx if it has a parameter named ctx, or a first positional parameter with no default.
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return 0
    if any(p.name == "ctx" for p in params):
        return 1
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return 1 if positional and positional[0].default is inspect.Parameter.empty else 0


def _wants_ctx(fn: Callable[..., Any]) -> bool:
    code = getattr(fn, "__code__", None)
    if code is None:
        return _arity(id(fn), fn) > 0
    return _arity(code, fn) > 0


def _bind(fn: Callable[..., Any], ctx: StepContext, kwargs: dict[str, Any] | None) -> Callable[[], Any]:
    if kwargs is not None:
        return functools.partial(fn, **{k: (ctx if k == "ctx" else v) for k, v in kwargs.items()})
    if _wants_ctx(fn):
        return functools.partial(fn, ctx)
    return fn


def _config_json(config: StepConfig) -> tuple[dict[str, object], str]:
    """A resolved config as Cloudflare's dict and as JSON, computed once per distinct config."""
    if config is DEFAULT_STEP_CONFIG:
        return _DEFAULT_CONFIG_JSON
    try:
        return _config_json_cached(config)
    except TypeError:  # an unhashable delay function
        return _config_json_uncached(config)


def _config_json_uncached(config: StepConfig) -> tuple[dict[str, object], str]:
    as_dict = config.to_dict()
    return as_dict, json.dumps(as_dict, separators=(",", ":"))


_config_json_cached = functools.lru_cache(maxsize=1024)(_config_json_uncached)
_DEFAULT_CONFIG_JSON: Final = _config_json_uncached(DEFAULT_STEP_CONFIG)


def _error_class_ref(exc: BaseException) -> str:
    cls = type(exc)
    return json.dumps({"class": f"{cls.__module__}:{cls.__qualname__}"})


def rebuild_error(rec: StepRecord) -> BaseException:
    """The stored failure of a step as an exception of its original class when that can be rebuilt."""
    name = rec.error_name or "Error"
    message = rec.error_message or ""
    try:
        ref = json.loads(rec.result or "{}").get("class", "")
        module_name, _, qualname = ref.partition(":")
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, Exception):
            exc = obj.__new__(obj)
            exc.args = (message,)
            if isinstance(exc, NonRetryableError | StepFailedError):
                exc.name = name
            return exc
    except Exception:
        pass
    return StepFailedError(name, message)


def _finish_attempt(att: Attempt, now: float, exc: BaseException | None) -> None:
    att.end = now
    att.success = exc is None
    if exc is not None:
        att.error_name, att.error_message = error_text(exc)
        att.traceback = format_failure(exc)


async def _retry_delay_ms(config: StepConfig, ctx: StepContext, exc: BaseException, attempt: int) -> float:
    retries = config.retries
    if retries.delay_fn is None:
        return retry_delay_ms(retries, attempt)
    try:
        async with asyncio.timeout(DELAY_FN_TIMEOUT_S):
            value: Any = retries.delay_fn(ctx, exc)
            if inspect.isawaitable(value):
                value = await value
        base = to_millis(value, what="retry delay")
    except TimeoutError:
        raise NonRetryableError(
            f'The delay function for step "{ctx.step["name"]}-{ctx.step["count"]}" did not resolve within 5 s',
            "NonRetryableDelayError",
        ) from exc
    except Exception as err:
        raise NonRetryableError(
            f'The delay function for step "{ctx.step["name"]}-{ctx.step["count"]}" failed: {err}',
            "NonRetryableDelayError",
        ) from exc
    return retry_delay_ms(retries, attempt, base)


async def run_do(
    state: RunState,
    name: str,
    count: int,
    config: StepConfig,
    fn: Callable[..., Any],
    kwargs: dict[str, Any] | None,
    *,
    kind: StepKind = "do",
    bind: Callable[[StepContext], Callable[[], Any]] | None = None,
) -> Any:
    """Run one ``step.do`` occurrence to its durable result or final error.

    ``kind="rollback"`` runs an undo handler the same way (its own record, retries and timeout), keyed by its
    step's name and count; ``bind`` makes each attempt's call from its context instead of ``fn``'s parameters.
    """
    key = step_key(kind, name, count)
    rec = state.history.get(key)
    declared = typed.return_type(fn)
    if rec is not None:
        if rec.status == "success":  # replayed: the recorded value, as the live call returned it
            stored = decode_result(state, rec.result or "null")
            if declared is None:
                return stored
            return typed.convert(declared, stored, what=f'step "{name}-{count}" result')
        if rec.status == "error":
            raise rebuild_error(rec)
    display = f"{name}-{count}"
    clock = state.clock
    if rec is not None:
        if rec.config and config.retries.delay_fn is None and config.retries.retry_if is None:
            config = StepConfig.from_dict(json.loads(rec.config))
        last = rec.attempts[-1] if rec.attempts else None
        if last is not None and last.end is None:
            # The process died during this attempt: it failed, and counts against the retry budget.
            crash = WorkflowFatalError("Attempt failed due to internal workflows error")
            _finish_attempt(last, clock.now(), crash)
            last.error_name = "WorkflowInternalError"
            if not will_retry(config.retries, len(rec.attempts)):
                rec.status, rec.ended_at = "error", last.end
                rec.error_name, rec.error_message = last.error_name, last.error_message
                rec.result = _error_class_ref(crash)
                await state.write(rec)
                raise crash
            assert last.end is not None
            rec.status = "retrying"
            rec.wake_at = last.end + retry_delay_ms(config.retries, len(rec.attempts)) / 1000
            await state.write(rec)
    else:
        rec = StepRecord(
            key,
            kind,
            name,
            count,
            state.next_seq(),
            "running",
            clock.now(),
            config=_config_json(config)[1],
        )
        state.history[key] = rec
    config_dict = _config_json(config)[0]
    running: Job | None = None  # a failed attempt's call that may still be running in its thread
    while True:
        if running is not None and not running.done.done():
            # No retry beside an earlier attempt that still runs (a timed-out sync call cannot be stopped).
            log.info("step %r of instance %s waits for its timed-out attempt's thread", display, state.instance_id)
            await asyncio.wait((running.done,))
        running = None
        await state.gate()
        if rec.status == "retrying" and rec.wake_at is not None:
            remaining = rec.wake_at - clock.now()
            reason = WakeReason("retry", display, rec.wake_at)
            if remaining > state.inprocess_wait_s:
                raise state.suspend(reason)
            if remaining > 0:
                await state.wait_in_process(reason)
                await state.gate()
        state.check_lease(display)
        attempt_no = len(rec.attempts) + 1
        att = Attempt(clock.now())
        rec.attempts.append(att)
        rec.status, rec.wake_at = "running", None
        marker = mark_start_later(state, rec, asyncio.get_running_loop())
        ctx = StepContext(attempt_no, name, count, config_dict)
        slot = AttemptSlot(display, config.timeout_ms / 1000)  # the watchdog reads it from this frame
        state.enter()
        try:
            try:
                try:
                    call = _bind(fn, ctx, kwargs) if bind is None else bind(ctx)
                    hooks = state.test_hooks if kind == "do" else None
                    live = (
                        call_step(state, fn, call, slot, config.timeout_ms)
                        if hooks is None
                        else hooks.attempt(
                            state,
                            name,
                            count,
                            attempt_no,
                            functools.partial(call_step, state, fn, call, slot, config.timeout_ms),
                        )
                    )
                    value = await state.observed(rec, attempt_no, live)
                finally:
                    marker[2] = None  # the attempt is over: no start mark once its outcome is being written
                    running = slot.job
                if declared is not None:
                    value = typed.to_plain(value)
                encoded = await store_result(state, key, display, value, config.timeout_ms)
                # Live and replayed calls return the same value: the stored form, built into the declared type
                # (a result that does not match it fails the step, without retries, as a ValidationError).
                result = decode_result(state, encoded)
                if declared is not None:
                    result = typed.convert(declared, result, what=f'step "{display}" result')
            except (SerializationError, StepOutputError) as exc:
                if isinstance(exc, LimitExceededError):
                    raise
                fatal = WorkflowFatalError(
                    str(exc)
                    if isinstance(exc, StepOutputError)
                    else f'The execution of the Workflow instance was terminated, as the step "{display}" returned '
                    f"a value which is not serialisable: {exc}"
                )
                state.fatal = fatal
                _finish_attempt(att, clock.now(), fatal)
                rec.status, rec.ended_at = "error", att.end
                rec.error_name, rec.error_message = "WorkflowFatalError", storable(str(fatal))
                rec.result = _error_class_ref(fatal)
                await state.write(rec)
                raise fatal from exc
            except Exception as exc:
                now = clock.now()
                _finish_attempt(att, now, exc)
                final = (
                    is_non_retryable(exc)
                    or isinstance(exc, LimitExceededError | ValidationError)
                    or not will_retry(config.retries, attempt_no)
                    or not config.retries.retries_error(exc)
                )
                if not final:
                    try:
                        delay = await _retry_delay_ms(config, ctx, exc, attempt_no)
                    except NonRetryableError as delay_exc:
                        exc, final = delay_exc, True
                        att.error_name, att.error_message = error_text(exc)
                    if state.test_hooks is not None and state.test_hooks.skip_retry_delay(state, name, count):
                        delay = 0.0
                if final:
                    rec.status, rec.ended_at = "error", now
                    rec.error_name, rec.error_message = error_text(exc)
                    rec.result = _error_class_ref(exc)
                    await state.write(rec)
                    raise exc
                rec.status, rec.wake_at = "retrying", now + delay / 1000
                await state.write(rec)
                continue
            now = clock.now()
            _finish_attempt(att, now, None)
            rec.status, rec.ended_at, rec.result = "success", now, encoded
            await state.write(rec)
        finally:
            marker[2] = None
            state.leave()
        return result


class StepCallable:
    """A step declared with the decorator form: await it (call it) to run the step.

    Parameters other than ``ctx`` name earlier declared steps whose results are passed in (or come from
    ``depends``, positionally); ``concurrent=True`` resolves them with ``asyncio.gather``.
    """

    def __init__(
        self,
        step: StepHost,
        name: str,
        fn: Callable[..., Any],
        config: Mapping[str, object] | StepConfig | None,
        concurrent: bool,
        depends: list[StepCallable] | None,
    ) -> None:
        self.name = name
        self._step = step
        self._fn = fn
        self._config = config
        self._concurrent = concurrent
        params = list(inspect.signature(fn).parameters)
        self._has_ctx = "ctx" in params
        self._params = [p for p in params if p != "ctx"]
        if depends is not None and len(depends) != len(self._params):
            raise TypeError(
                f"Step declares {len(self._params)} non-ctx parameter(s) but 'depends' has {len(depends)} item(s)"
            )
        self._depends = depends
        self._memo: asyncio.Future[Any] | None = None
        functools.update_wrapper(self, fn)

    def __call__(self) -> Awaitable[Any]:
        """Run the step (again: a second call is a second occurrence, ``name-2``)."""
        aw = self._with_deps() if self._params else self._start({"ctx": None} if self._has_ctx else {})
        fut = asyncio.ensure_future(aw)
        if self._memo is None:
            self._memo = fut
        return fut

    async def _with_deps(self) -> Any:
        deps: list[StepCallable] = []
        for i, param in enumerate(self._params):
            dep = self._depends[i] if self._depends is not None else self._step.declared(param)
            if dep is None:
                raise TypeError(f"Received unexpected parameter {param}")
            deps.append(dep)
        if self._concurrent:
            values = list(await asyncio.gather(*(d.resolved() for d in deps)))
        else:
            values = [await d.resolved() for d in deps]
        kwargs: dict[str, Any] = dict(zip(self._params, values, strict=True))
        if self._has_ctx:
            kwargs["ctx"] = None
        return await self._start(kwargs)

    def _start(self, kwargs: dict[str, Any]) -> Awaitable[Any]:
        """Start this step's next occurrence (its counter taken now)."""
        return self._step.call(self.name, self._fn, self._config, kwargs)

    def resolved(self) -> asyncio.Future[Any]:
        """This step's result in this run, running it once if nothing has yet."""
        if self._memo is None:
            self()
        assert self._memo is not None
        return self._memo
