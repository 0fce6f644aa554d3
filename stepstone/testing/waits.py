"""Waiting on an instance in a test: for a status, a step's result, an event wait; reading its output or error.

Each helper polls the instance's record and history (what every surface reads) every few real milliseconds,
and gives up after ``timeout`` real seconds with an AssertionError that says what the instance is doing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, TypedDict

from stepstone import codec
from stepstone.codec import BlobRef
from stepstone.errors import ValidationError, WorkflowTimeoutError
from stepstone.instance import InstanceError, InstanceStatus, WorkflowInstance
from stepstone.models import FINISHED, StepKind, StepRecord
from stepstone.step_do import rebuild_error

if TYPE_CHECKING:
    from stepstone.testing.engine import TestEngine

DEFAULT_TIMEOUT: Final = 10.0
EVENT_HOLD_S: Final = 5.0
"""Real seconds after ``wait_for_event_wait`` returns during which a test engine's clock does not skip that
wait's deadline: time for the test to send the event (another wait on the instance ends it sooner)."""
INTERVAL: Final = 0.003

StepType = Literal["do", "sleep", "waitForEvent"]
_KINDS: Final[dict[str, StepKind]] = {
    "do": "do",
    "step": "do",
    "sleep": "sleep",
    "waitForEvent": "wait",
    "wait": "wait",
}


class StepSelectorDict(TypedDict, total=False):
    """A step as Cloudflare's introspection names it: ``name``, 1-based ``count`` (Cloudflare's ``index``) among
    the steps of that name, and ``type`` (``do``, ``sleep`` or ``waitForEvent``)."""

    name: str
    count: int
    index: int
    type: StepType


StepSelector = str | StepSelectorDict | Mapping[str, Any]
"""A step name (its first occurrence) or a :class:`StepSelectorDict`."""


def parse_selector(step: StepSelector, *, default: StepType = "do", what: str = "step") -> tuple[StepKind, str, int]:
    """``(kind, name, count)`` of a selector; a ValidationError names the bad field."""
    if isinstance(step, str):
        return _KINDS[default], step, 1
    if not isinstance(step, Mapping):
        raise ValidationError(f"{what}: expected a step name or {{'name', 'count', 'type'}}, got {type(step).__name__}")
    unknown = set(step) - {"name", "count", "index", "type"}
    if unknown:
        raise ValidationError(f"{what}: unknown key(s) {sorted(unknown)}; a step is {{'name', 'count', 'type'}}")
    name = step.get("name")
    if not isinstance(name, str) or not name:
        raise ValidationError(f"{what}: 'name' must be a non-empty string, got {name!r}")
    count = step.get("count", step.get("index", 1))
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValidationError(f"{what} {name!r}: 'count' must be an integer >= 1, got {count!r}")
    kind = step.get("type", default)
    if kind not in _KINDS:
        raise ValidationError(f"{what} {name!r}: 'type' must be 'do', 'sleep' or 'waitForEvent', got {kind!r}")
    return _KINDS[kind], name, count


def _test_engine(instance: WorkflowInstance) -> TestEngine | None:
    from stepstone.testing.engine import engine_of

    return engine_of(instance.workflow)


def _release(instance: WorkflowInstance) -> None:
    engine = _test_engine(instance)
    if engine is not None:
        engine.release_holds(instance.workflow.name, instance.id)


def _display(kind: StepKind, name: str, count: int) -> str:
    return f"{kind} step {name!r} (count {count})"


async def _poll(interval: float) -> None:
    await asyncio.sleep(interval)


def _deadline(timeout: float) -> float:
    return asyncio.get_running_loop().time() + timeout


def _expired(deadline: float) -> bool:
    return asyncio.get_running_loop().time() > deadline


async def wait_for_status(
    instance: WorkflowInstance, *statuses: str, timeout: float = DEFAULT_TIMEOUT, interval: float = INTERVAL
) -> InstanceStatus:
    """Wait until the instance is in one of ``statuses`` (default: any finished one); returns its status.

    ``queued`` is reached at once, as in Cloudflare's ``waitForStatus``.

    Raises:
        AssertionError: the instance finished in another status (it can never reach the wanted one), or
            ``timeout`` real seconds passed.
    """
    wanted = set(statuses) or set(FINISHED)
    _release(instance)
    deadline = _deadline(timeout)
    while True:
        status = await instance.status()
        if status.status in wanted or "queued" in wanted:
            return status
        if status.status in FINISHED:
            raise AssertionError(
                f"instance {instance.id} reached the final status {status.status!r} ({status.error}), "
                f"so it can never reach {sorted(wanted)}"
            )
        if _expired(deadline):
            raise AssertionError(f"instance {instance.id} is still {status.status} after {timeout}s, wanted {wanted}")
        await _poll(interval)


def _settled(rec: StepRecord) -> bool:
    return rec.status in ("success", "error", "timeout")


def _step_value(rec: StepRecord) -> Any:
    if rec.status == "success":
        return None if rec.kind == "sleep" else codec.decode(rec.result or "null")
    if rec.kind == "wait":
        raise WorkflowTimeoutError(rec.error_message or "Execution timed out")
    raise rebuild_error(rec)


async def wait_for_step_result(
    instance: WorkflowInstance, step: StepSelector, *, timeout: float = DEFAULT_TIMEOUT, interval: float = INTERVAL
) -> Any:
    """Wait until the step has its final result and return it (what the workflow's code receives).

    Raises:
        Exception: the step's own error, rebuilt as on replay, when it failed for good (a wait that timed out
            raises WorkflowTimeoutError).
        AssertionError: the instance finished without settling the step, or ``timeout`` passed.
    """
    kind, name, count = parse_selector(step)
    _release(instance)
    deadline = _deadline(timeout)
    while True:
        rec = await instance.record()
        steps = await instance.history()
        found = next((s for s in steps if s.kind == kind and s.name == name and s.count == count), None)
        if found is not None and _settled(found):
            value = _step_value(found)
            if isinstance(value, BlobRef):  # a streamed output: the ByteStream the workflow's code receives
                return await instance.output_stream(value)
            return value
        if rec.status in FINISHED:
            raise AssertionError(
                f"instance {instance.id} ended {rec.status} without a result for {_display(kind, name, count)}"
            )
        if _expired(deadline):
            where = "not started" if found is None else found.status
            raise AssertionError(f"{_display(kind, name, count)} of {instance.id} is still {where} after {timeout}s")
        await _poll(interval)


async def wait_for_event_wait(
    instance: WorkflowInstance, event_type: str, *, timeout: float = DEFAULT_TIMEOUT, interval: float = INTERVAL
) -> dict[str, Any]:
    """Wait until the instance hibernates in a ``wait_for_event`` for ``event_type``; returns what it waits for
    (``{"kind", "name", "until", "types"}``). Send the event after this and it is the one consumed.

    Raises:
        AssertionError: the instance finished first, or ``timeout`` passed.
    """
    engine = _test_engine(instance)
    if engine is not None:  # no skip over this wait's deadline while we look, nor just after
        engine.hold_event_deadline(instance.workflow.name, instance.id, event_type)
    try:
        waiting = await _event_wait(instance, event_type, timeout, interval)
    except BaseException:
        _release(instance)
        raise
    if engine is not None:
        engine.hold_event_deadline(instance.workflow.name, instance.id, event_type, EVENT_HOLD_S)
    return waiting


async def _event_wait(instance: WorkflowInstance, event_type: str, timeout: float, interval: float) -> dict[str, Any]:
    deadline = _deadline(timeout)
    while True:
        rec = await instance.record()
        waiting: dict[str, Any] = json.loads(rec.waiting_for) if rec.waiting_for else {}
        if rec.status == "waiting" and event_type in waiting.get("types", []):
            return waiting
        if rec.status in FINISHED:
            raise AssertionError(
                f"instance {instance.id} ended {rec.status} before waiting for an event {event_type!r}"
            )
        if _expired(deadline):
            raise AssertionError(
                f"instance {instance.id} is {rec.status} ({waiting or 'not waiting'}) after {timeout}s, "
                f"not waiting for an event {event_type!r}"
            )
        await _poll(interval)


async def get_output(instance: WorkflowInstance) -> Any:
    """The output of a complete instance.

    Raises:
        AssertionError: the instance is not complete.
    """
    status = await instance.status()
    if status.status != "complete":
        raise AssertionError(f"instance {instance.id} is {status.status} ({status.error}): it has no output")
    return status.output


async def get_error(instance: WorkflowInstance) -> InstanceError:
    """The error (``name``, ``message``) of an errored instance.

    Raises:
        AssertionError: the instance has not errored.
    """
    status = await instance.status()
    if status.status != "errored" or status.error is None:
        raise AssertionError(f"instance {instance.id} is {status.status}: it has no error")
    return status.error
