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
from dataclasses import dataclass
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
"""Every type Cloudflare documents (``docs/engine.md``): the ``rollback_*`` ones come from undo handlers
(``step.rollback_all``, ``terminate(rollback=True)``)."""


def mark(step: StepRecord) -> Mark:
    """How far a stored record got."""
    ended = 0
    for attempt in step.attempts:
        if attempt.end is None:
            break
        ended += 1
    return len(step.attempts), ended, step.status in _SETTLED


PACKED: Final = "step"
"""The type of an event row that stands for every event one write of a ``step.do`` adds (see below)."""
PACKED_ROLLBACK: Final = "rollback_step"
"""The same for a write of an undo handler (a ``rollback`` step): its events are the ``rollback_`` ones."""
PER_ROW: Final = 16
"""Event ids per row: a row's events are ``event_id * PER_ROW + j``; a write adding more splits its row."""


def mark_code(m: Mark | None) -> int:
    """A mark as one integer, -1 for none: twice the attempt starts and ends so far, plus one when settled.

    Attempts run one at a time, so the ends trail the starts by at most one and their sum says both.
    """
    if m is None:
        return -1
    return 2 * (m[0] + m[1]) + int(m[2])


def packed_events(since: int, upto: int) -> list[tuple[str, int | None]]:
    """The events a packed row from mark code ``since`` to ``upto`` stands for, in order: ``(type, attempt)``
    with attempt 1-based (None for the step's own events); an attempt's end is ``attempt_ended``, which the
    reader turns into completed or errored from the stored attempt."""
    events: list[tuple[str, int | None]] = []
    if since < 0:
        events.append(("step_started", None))
        since = 0
    for position in range(since >> 1, upto >> 1):
        events.append(("attempt_started" if position % 2 == 0 else "attempt_ended", position // 2 + 1))
    if upto & 1 and not since & 1:
        events.append(("step_settled", None))
    return events


def _packed_rows(prev: int, now: int, at: float, key: str, detail: str | None, packed: str = PACKED) -> list[NewEvent]:
    """Rows of at most :data:`PER_ROW` events from mark code ``prev`` to ``now`` (one row but in odd cases)."""
    if (now >> 1) - (max(prev, 0) >> 1) + 2 < PER_ROW:  # the common case: a few events, one row
        return [(packed, at, key, now, detail, prev)]
    rows: list[NewEvent] = []
    while len(packed_events(prev, now)) > PER_ROW:
        cut = 2 * ((max(prev, 0) >> 1) + PER_ROW - (1 if prev < 0 else 0))  # an unsettled mark PER_ROW events on
        rows.append((packed, at, key, cut, None, prev))
        prev = cut
    rows.append((packed, at, key, now, detail, prev))
    return rows


def step_events(prev: Mark | None, step: StepRecord) -> tuple[list[NewEvent], Mark]:
    """The event rows writing ``step`` adds after ``prev`` (None: the step was never written), and its new mark.

    A ``step.do`` write adds one packed row: the marks before and after (``since`` and ``attempt``), and in
    ``detail`` only what the step row cannot tell later, the retry delay of an attempt that just failed. The
    events it stands for (step started, attempts started and ended, step settled) are read back from the step row
    when they are delivered (:func:`expand_packed`), whose attempts and times are written once and never change.
    """
    now = mark(step)
    key = step.key
    if step.kind in ("do", "rollback"):
        if now == prev:
            return [], now
        detail = None
        if step.status == "retrying" and step.wake_at is not None and now[0] == now[1] and now[1] > (prev or (0, 0))[1]:
            last = step.attempts[now[1] - 1]
            if last.end is not None and not last.success:
                detail = f'{{"retryDelayMs":{max(0, round((step.wake_at - last.end) * 1000))}}}'
        at = step.ended_at if step.ended_at is not None else step.started_at
        packed = PACKED if step.kind == "do" else PACKED_ROLLBACK
        return _packed_rows(mark_code(prev), mark_code(now), at, key, detail, packed), now
    events: list[NewEvent] = []
    if step.kind == "sleep":
        if prev is None:
            duration = 0.0 if step.wake_at is None else max(0.0, step.wake_at - step.started_at)
            detail_text = json.dumps({"durationMs": round(duration * 1000)})
            events.append(("sleep_started", step.started_at, key, None, detail_text, None))
        if now[2] and (prev is None or not prev[2]):
            ended = step.ended_at if step.ended_at is not None else step.started_at
            events.append(("sleep_completed", ended, key, None, None, None))
        return events, now
    if prev is None:
        events.append(("wait_started", step.started_at, key, None, None, None))
    if now[2] and (prev is None or not prev[2]):
        ended = step.ended_at if step.ended_at is not None else step.started_at
        kind = "wait_completed" if step.status == "success" else "wait_timed_out"
        events.append((kind, ended, key, None, None, None))
    return events, now


@dataclass(slots=True)
class RollbackPass:
    """One run of undo handlers (``step.rollback_all`` or a terminate's rollback), as its writes tell it.

    ``start_key``: the handler whose first write adds ``rollback_started`` (None when an earlier execution of
    this pass already wrote one: a replay after a crash). ``last_key``: the handler whose settling ends the pass
    (``rollback_completed``, or ``rollback_errored`` if one failed); a handler failing ends it at once unless
    ``continue_on_error``.
    """

    start_key: str | None
    last_key: str
    continue_on_error: bool = False
    failed: bool = False


def rollback_lifecycle(
    prev: Mark | None, step: StepRecord, rollback: RollbackPass | None
) -> tuple[list[NewEvent], list[NewEvent]]:
    """The pass events a write of an undo handler adds before its own (``rollback_started``) and after them
    (``rollback_completed``, ``rollback_errored``)."""
    before: list[NewEvent] = []
    after: list[NewEvent] = []
    if rollback is None or step.kind != "rollback":
        return before, after
    if prev is None and step.key == rollback.start_key:
        before.append(("rollback_started", step.started_at, None, None, None, None))
    if step.status in _SETTLED and (prev is None or not prev[2]):
        at = step.ended_at if step.ended_at is not None else step.started_at
        if step.status == "error":
            rollback.failed = True
        if step.status == "error" and not rollback.continue_on_error:
            after.append(("rollback_errored", at, None, None, None, None))
        elif step.key == rollback.last_key:
            after.append(("rollback_errored" if rollback.failed else "rollback_completed", at, None, None, None, None))
    return before, after
