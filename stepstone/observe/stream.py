"""The instance event stream: Cloudflare's ``WorkflowInstance.subscribe()`` read from what the engine records.

:func:`subscribe` first delivers the instance's recorded events, then live ones as they are committed, and ends
after the terminal event (``workflow_completed``, ``workflow_errored``, ``workflow_terminated``), even one its
filter leaves out. Each event is a plain JSON dict in Cloudflare's shape (``instanceId``, ``eventId``,
``timestamp`` in epoch milliseconds, ``type``, and the type's fields); ``eventId`` grows with every event of
the instance, and a subscription given ``cursor`` starts after that event, so a reader that stores the last id
it processed resumes without losing or repeating one.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any, Final

from stepstone import codec
from stepstone.codec import REDACTED, plain
from stepstone.errors import InstanceNotFoundError, ValidationError
from stepstone.history import EVENT_TYPES, TERMINAL
from stepstone.models import FINISHED, HistoryEvent, InstanceRecord
from stepstone.storage.base import Storage
from stepstone.storage.bell import StreamWaiter

PAGE: Final = 500
"""Events read per query."""
FALLBACK_WAIT_S: Final = 2.0
"""How long a reader waits for a wake-up before it looks anyway (a lost signal never stalls a stream)."""
_TYPES: Final = frozenset(EVENT_TYPES)


def check_options(filter: Iterable[str] | None, cursor: object) -> tuple[frozenset[str] | None, int]:
    """Validate ``filter`` (event types) and ``cursor`` (an ``eventId``, 0 or more); raises ValidationError
    naming the field."""
    types: frozenset[str] | None = None
    if filter is not None:
        if isinstance(filter, str | bytes) or not isinstance(filter, Iterable):
            raise ValidationError(f"subscribe filter must be a list of event types, got {filter!r}")
        listed = list(filter)
        unknown = [t for t in listed if t not in _TYPES]
        if unknown:
            raise ValidationError(
                f"subscribe filter: unknown event type {unknown[0]!r}; known types: {', '.join(EVENT_TYPES)}"
            )
        types = frozenset(listed)
    if cursor is None:
        return types, 0
    if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
        raise ValidationError(f"subscribe cursor must be an eventId (an integer >= 0), got {cursor!r}")
    return types, cursor


async def subscribe(
    storage: Storage,
    account: str,
    workflow: str,
    instance_id: str,
    *,
    filter: Iterable[str] | None = None,
    cursor: int | None = None,
) -> AsyncIterator[dict[str, Any]]:
    """The events of one instance after ``cursor``: recorded ones, then live ones, up to the terminal event.

    Raises:
        ValidationError: a bad ``filter`` or ``cursor``.
        InstanceNotFoundError: no such instance (when the subscription starts; one deleted while it is read
            just ends the stream).
    """
    types, after = check_options(filter, cursor)
    waiter: StreamWaiter | None = None
    try:
        while True:
            try:
                inst, rows = await storage.read_stream(account, workflow, instance_id, after=after, limit=PAGE)
            except InstanceNotFoundError:
                if waiter is None:
                    raise
                return  # deleted meanwhile
            for row in rows:
                after = row.event_id
                if types is None or row.type in types:
                    yield to_event(inst, row)
                if row.type in TERMINAL:
                    return
            if inst.status in FINISHED and not rows:
                return  # it ended at or before the cursor
            if waiter is None:
                waiter = storage.stream_waiter(inst.pk)
                continue  # read once more now that no commit can go unnoticed
            if len(rows) < PAGE:
                await waiter.wait(FALLBACK_WAIT_S)
    finally:
        if waiter is not None:
            waiter.close()


def _decoded(text: str | None) -> Any:
    return None if text is None else plain(codec.decode(text))


def to_event(inst: InstanceRecord, row: HistoryEvent) -> dict[str, Any]:
    """One recorded event in Cloudflare's shape."""
    event: dict[str, Any] = {
        "instanceId": inst.id,
        "eventId": row.event_id,
        "timestamp": round(row.at * 1000),
        "type": row.type,
    }
    detail: Mapping[str, Any] = json.loads(row.detail) if row.detail else {}
    kind = row.type
    if kind.startswith("workflow_"):
        if kind == "workflow_started":
            event["params"] = _decoded(inst.params)
        elif kind == "workflow_completed":
            event["output"] = _decoded(inst.output)
        elif kind == "workflow_errored":
            error: dict[str, Any] = {"name": inst.error_name or "Error", "message": inst.error_message or ""}
            if inst.error_traceback:
                error["traceback"] = inst.error_traceback
            event["error"] = error
        return event
    if kind in ("rollback_started", "rollback_completed", "rollback_errored"):
        return event
    event["stepName"] = row.step_name
    if kind.startswith("rollback_"):  # an undo handler's events: the step's and attempt's fields, renamed
        kind = kind.removeprefix("rollback_")
        if kind == "step_errored":
            event["error"] = detail.get("error", {"name": "Error", "message": ""})
        elif kind == "step_completed":
            return event  # Cloudflare's rollback_step_completed carries no output
    if kind == "step_started":
        if row.step_config:
            event["config"] = json.loads(row.step_config)
    elif kind == "step_completed":
        config = json.loads(row.step_config) if row.step_config else {}
        sensitive = isinstance(config, dict) and config.get("sensitive") == "output"
        event["output"] = REDACTED if sensitive else _decoded(row.step_result)
    elif kind.startswith("attempt_"):
        event["attempt"] = row.attempt
        if kind == "attempt_errored":
            if "retryDelayMs" in detail:
                event["retryDelayMs"] = detail["retryDelayMs"]
            event["error"] = detail.get("error", {"name": "Error", "message": ""})
    elif kind == "sleep_started":
        event["durationMs"] = detail.get("durationMs", 0)
    elif kind == "wait_started":
        event["eventType"] = row.step_event_type
    return event
