"""Which instance events (Cloudflare's ``subscribe`` stream) a step write adds to an instance's history.

A step's stored record says how far it got: started, how many attempts started and ended, settled or not. The
events a write adds are the difference between the record as last written and the record being written, so
they go into the same transaction as the step row they describe (no second source of truth), and a replay,
which writes nothing for the steps it finds settled, adds none. Lifecycle events (``workflow_*``) are written
by the storage itself, with the status change (:mod:`stepstone.storage`).

Only what the step row cannot tell later is copied into an event's ``detail``: an attempt's error (with its
traceback) and retry delay, a sleep's duration. Names, configs and outputs are read from the step row when the
event is delivered (:mod:`stepstone.observe.stream`).
"""

from __future__ import annotations

import json
from typing import Final

from stepstone.models import NewEvent, StepRecord

Mark = tuple[int, int, bool]
"""How far a step's written record got: (attempts started, attempts ended, settled)."""

_SETTLED: Final = frozenset({"success", "error", "timeout"})
TERMINAL: Final = frozenset({"workflow_completed", "workflow_errored", "workflow_terminated"})
EVENT_TYPES: Final = (
    "workflow_queued",
    "workflow_started",
    "workflow_running",
    "workflow_paused",
    "workflow_waiting_for_pause",
    "workflow_waiting",
    "workflow_completed",
    "workflow_errored",
    "workflow_terminated",
    "step_started",
    "step_completed",
    "step_errored",
    "attempt_started",
    "attempt_completed",
    "attempt_errored",
    "sleep_started",
    "sleep_completed",
    "wait_started",
    "wait_completed",
    "wait_timed_out",
    "rollback_started",
    "rollback_step_started",
    "rollback_step_completed",
    "rollback_step_errored",
    "rollback_attempt_started",
    "rollback_attempt_completed",
    "rollback_attempt_errored",
    "rollback_completed",
    "rollback_errored",
)
"""Every type Cloudflare documents; stepstone has no rollbacks yet, so it never emits ``rollback_*``."""


def mark(step: StepRecord) -> Mark:
    """How far a stored record got."""
    ended = 0
    for attempt in step.attempts:
        if attempt.end is None:
            break
        ended += 1
    return len(step.attempts), ended, step.status in _SETTLED


def step_events(prev: Mark | None, step: StepRecord) -> tuple[list[NewEvent], Mark]:
    """The events writing ``step`` adds after ``prev`` (None: the step was never written), and its new mark."""
    now = mark(step)
    events: list[NewEvent] = []
    key = step.key
    if step.kind == "do":
        if prev is None:
            events.append(("step_started", step.started_at, key, None, None))
            prev = (0, 0, False)
        attempts = step.attempts
        for i in range(prev[0], now[0]):
            events.append(("attempt_started", attempts[i].start, key, i + 1, None))
        for i in range(prev[1], now[1]):
            att = attempts[i]
            assert att.end is not None
            if att.success:
                events.append(("attempt_completed", att.end, key, i + 1, None))
                continue
            error: dict[str, object] = {"name": att.error_name or "Error", "message": att.error_message or ""}
            if att.traceback:
                error["traceback"] = att.traceback
            detail: dict[str, object] = {"error": error}
            if i == now[0] - 1 and step.status == "retrying" and step.wake_at is not None:
                detail["retryDelayMs"] = max(0, round((step.wake_at - att.end) * 1000))
            events.append(("attempt_errored", att.end, key, i + 1, json.dumps(detail, separators=(",", ":"))))
        if now[2] and not prev[2]:
            ended = step.ended_at if step.ended_at is not None else step.started_at
            events.append(("step_completed" if step.status == "success" else "step_errored", ended, key, None, None))
        return events, now
    if step.kind == "sleep":
        if prev is None:
            duration = 0.0 if step.wake_at is None else max(0.0, step.wake_at - step.started_at)
            detail_text = json.dumps({"durationMs": round(duration * 1000)})
            events.append(("sleep_started", step.started_at, key, None, detail_text))
        if now[2] and (prev is None or not prev[2]):
            ended = step.ended_at if step.ended_at is not None else step.started_at
            events.append(("sleep_completed", ended, key, None, None))
        return events, now
    if prev is None:
        events.append(("wait_started", step.started_at, key, None, None))
    if now[2] and (prev is None or not prev[2]):
        ended = step.ended_at if step.ended_at is not None else step.started_at
        events.append(("wait_completed" if step.status == "success" else "wait_timed_out", ended, key, None, None))
    return events, now
