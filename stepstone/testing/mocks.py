"""What ``modify()`` records, and the hooks through which a :class:`~stepstone.testing.TestEngine` applies it.

The semantics are Cloudflare's (``@cloudflare/vitest-pool-workers``, ``workflows-shared``):

- a mocked result, error or forced timeout replaces one attempt of the step: the attempt is recorded (it
  counts against the retry budget), the step's function is not called, and the outcome is stored as a real
  one would be, so a replay returns the mocked result or re-raises the mocked error without asking again;
- ``times=n`` covers the next ``n`` attempts of the step not yet covered, in the order the calls were made
  (``force_step_timeout(s, 1)`` then ``mock_step_error(s, e, 1)``: attempt 1 times out, attempt 2 fails);
  without ``times`` an error or timeout covers every attempt; a mocked result covers the attempts no error or
  timeout covers; a result cannot be mocked twice, nor an error or timeout after it;
- a forced step timeout fails the attempt with ``WorkflowTimeoutError("Execution timed out after 0ms")``;
- a mocked event is delivered to the first ``wait_for_event`` of its type, before any sent event;
- selectors name a step's first occurrence unless they give ``count``.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from stepstone import codec
from stepstone.errors import ValidationError, WorkflowTimeoutError
from stepstone.models import StepKind
from stepstone.run_state import RunState
from stepstone.testing.waits import StepSelector, StepType, parse_selector

Key = tuple[str, int]
Outcome = tuple[Literal["error"], BaseException] | tuple[Literal["timeout"], None]


@dataclass
class _StepMocks:
    result: tuple[Any] | None = None
    always: Outcome | None = None
    by_attempt: dict[int, Outcome] = field(default_factory=dict)
    planned: int = 0

    def plan(self, outcome: Outcome, times: int | None) -> None:
        if times is None:
            if self.always is None or self.always[0] == "timeout":  # an error wins over a timeout
                self.always = outcome
            return
        for _ in range(times):
            self.planned += 1
            self.by_attempt[self.planned] = outcome

    def outcome(self, attempt: int) -> Outcome | None:
        if self.always is not None and self.always[0] == "error":
            return self.always
        return self.by_attempt.get(attempt) or self.always


@dataclass
class InstanceMocks:
    """Every modification that applies to one instance."""

    all_sleeps: bool = False
    sleeps: set[Key] = field(default_factory=set)
    all_retry_delays: bool = False
    retry_delays: set[Key] = field(default_factory=set)
    steps: dict[Key, _StepMocks] = field(default_factory=dict)
    event_timeouts: set[Key] = field(default_factory=set)
    events: dict[str, deque[Any]] = field(default_factory=dict)


class Modifier:
    """What ``modify(fn)`` hands to ``fn``: each method records one modification and returns the modifier, so
    calls chain (``m.disable_sleeps().mock_step_result("fetch", {...})``); ``await m.disable_sleeps()`` works
    as in Cloudflare's API."""

    def __init__(self, apply: Callable[[Callable[[InstanceMocks], None]], None]) -> None:
        self._apply = apply

    def __await__(self) -> Generator[Any, None, Modifier]:
        return self
        yield  # pragma: no cover - makes this a generator

    def _select(self, step: StepSelector, kind: StepType, what: str) -> Key:
        parsed_kind, name, count = parse_selector(step, default=kind, what=what)
        wanted: StepKind = {"do": "do", "sleep": "sleep", "waitForEvent": "wait"}[kind]  # type: ignore[assignment]
        if parsed_kind != wanted:
            raise ValidationError(f"{what}: step {name!r} has type {parsed_kind!r}; {what} applies to {kind!r} steps")
        return name, count

    def _many(self, steps: Sequence[StepSelector] | None, kind: StepType, what: str) -> list[Key] | None:
        if steps is None:
            return None
        if isinstance(steps, str | dict):
            raise ValidationError(f"{what}: steps must be a list of steps, got {type(steps).__name__}")
        return [self._select(s, kind, what) for s in steps]

    def disable_sleeps(self, steps: Sequence[StepSelector] | None = None) -> Modifier:
        """Every ``step.sleep``/``sleep_until`` (or only these) ends at once."""
        keys = self._many(steps, "sleep", "disable_sleeps")

        def apply(m: InstanceMocks) -> None:
            if keys is None:
                m.all_sleeps = True
            else:
                m.sleeps.update(keys)

        self._apply(apply)
        return self

    def disable_retry_delays(self, steps: Sequence[StepSelector] | None = None) -> Modifier:
        """Every failed attempt (or those of these steps) is retried at once."""
        keys = self._many(steps, "do", "disable_retry_delays")

        def apply(m: InstanceMocks) -> None:
            if keys is None:
                m.all_retry_delays = True
            else:
                m.retry_delays.update(keys)

        self._apply(apply)
        return self

    def mock_step_result(self, step: StepSelector, value: Any) -> Modifier:
        """The step's attempts return ``value`` without calling its function (after any mocked errors)."""
        key = self._select(step, "do", "mock_step_result")
        codec.encode(value, what=f"mock_step_result {key[0]!r}")  # refuse an unstorable value here, not mid-run

        def apply(m: InstanceMocks) -> None:
            mocks = m.steps.setdefault(key, _StepMocks())
            if mocks.result is not None:
                raise ValidationError(f"[WorkflowIntrospector] Trying to mock step '{key[0]}' multiple times!")
            mocks.result = (value,)

        self._apply(apply)
        return self

    def mock_step_error(self, step: StepSelector, error: BaseException, times: int | None = None) -> Modifier:
        """The step's attempts (or the next ``times`` of them) raise ``error`` without calling its function."""
        key = self._select(step, "do", "mock_step_error")
        if not isinstance(error, Exception):
            raise ValidationError(f"mock_step_error {key[0]!r}: error must be an Exception, got {error!r}")
        self._plan(key, ("error", error), times, "mock_step_error", "mock error on")
        return self

    def force_step_timeout(self, step: StepSelector, times: int | None = None) -> Modifier:
        """The step's attempts (or the next ``times`` of them) time out at once without calling its function."""
        key = self._select(step, "do", "force_step_timeout")
        self._plan(key, ("timeout", None), times, "force_step_timeout", "force timeout on")
        return self

    def _plan(self, key: Key, outcome: Outcome, times: int | None, what: str, verb: str) -> None:
        if times is not None and (not isinstance(times, int) or isinstance(times, bool) or times < 1):
            raise ValidationError(f"{what} {key[0]!r}: times must be a positive integer or None, got {times!r}")

        def apply(m: InstanceMocks) -> None:
            mocks = m.steps.setdefault(key, _StepMocks())
            if mocks.result is not None:
                raise ValidationError(
                    f"[WorkflowIntrospector] Trying to {verb} step '{key[0]}' after mocking its result!"
                )
            mocks.plan(outcome, times)

        self._apply(apply)

    def mock_event(self, type: str, payload: Any = None) -> Modifier:
        """An event of ``type`` with ``payload`` reaches the first ``wait_for_event`` of that type."""
        if not isinstance(type, str) or not type:
            raise ValidationError(f"mock_event: type must be a non-empty string, got {type!r}")
        codec.encode(payload, what=f"mock_event {type!r} payload")

        def apply(m: InstanceMocks) -> None:
            m.events.setdefault(type, deque()).append(payload)

        self._apply(apply)
        return self

    def force_event_timeout(self, step: StepSelector) -> Modifier:
        """The ``wait_for_event`` step times out at once (``WorkflowTimeoutError``), whatever was sent."""
        key = self._select(step, "waitForEvent", "force_event_timeout")

        def apply(m: InstanceMocks) -> None:
            m.event_timeouts.add(key)

        self._apply(apply)
        return self


async def _raise(exc: BaseException) -> Any:
    raise exc


async def _value(value: Any) -> Any:
    return value


class Mocks:
    """The test engine's hooks: each run asks here, by workflow and instance id, what to change."""

    def __init__(self) -> None:
        self.instances: dict[tuple[str, str], InstanceMocks] = {}

    def _of(self, state: RunState) -> InstanceMocks | None:
        return self.instances.get((state.workflow, state.instance_id))

    def attempt(
        self, state: RunState, name: str, count: int, attempt: int, run: Callable[[], Awaitable[Any]]
    ) -> Awaitable[Any]:
        mocks = self._of(state)
        step = mocks.steps.get((name, count)) if mocks is not None else None
        if step is None:
            return run()
        outcome = step.outcome(attempt)
        if outcome is not None and outcome[0] == "error":
            return _raise(copy.copy(outcome[1]))
        if outcome is not None:
            return _raise(WorkflowTimeoutError("Execution timed out after 0ms"))
        if step.result is not None:
            return _value(step.result[0])
        return run()

    def skip_sleep(self, state: RunState, name: str, count: int) -> bool:
        mocks = self._of(state)
        return mocks is not None and (mocks.all_sleeps or (name, count) in mocks.sleeps)

    def skip_retry_delay(self, state: RunState, name: str, count: int) -> bool:
        mocks = self._of(state)
        return mocks is not None and (mocks.all_retry_delays or (name, count) in mocks.retry_delays)

    def event_timeout(self, state: RunState, name: str, count: int) -> bool:
        mocks = self._of(state)
        return mocks is not None and (name, count) in mocks.event_timeouts

    def mocked_event(self, state: RunState, event_type: str) -> tuple[Any] | None:
        mocks = self._of(state)
        queue = mocks.events.get(event_type) if mocks is not None else None
        return (queue.popleft(),) if queue else None
