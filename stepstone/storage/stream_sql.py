"""SQL of the instance event stream shared by both backends (``%s`` placeholders; SQLite swaps in ``?``).

The ``instance_events`` table holds the event rows: lifecycle rows (one event each) are written by triggers on
the instance's status change (see the schema modules), step rows by the step writes: one row per event of a sleep
or a wait, one packed row per write of a ``step.do`` standing for all the events it adds (its marks before and
after, :mod:`stepstone.history`). A row keeps only what its step cannot tell later (``detail``); reading joins
the step as it is stored now for its name, config, output, times and attempts. A row's events have the ids
``event_id * PER_ROW + j``, so a cursor names an event inside a row.
"""

from __future__ import annotations

import json
from typing import Any, Final

from stepstone.history import PACKED, PACKED_ROLLBACK, PER_ROW, packed_events
from stepstone.models import HistoryEvent

STREAM_EVENTS: Final = (
    "SELECT e.event_id, e.type, e.at, e.step_key, e.attempt, e.detail, s.name, s.count, s.result, s.config, "
    "s.event_type, e.since, s.status, s.started_at, s.ended_at, s.attempts FROM instance_events e "
    "LEFT JOIN steps s ON s.instance_pk = e.instance_pk AND s.key = e.step_key "
    "WHERE e.instance_pk = %s AND e.event_id >= %s ORDER BY e.event_id LIMIT %s"
)
GAP: Final = "gap"
"""The type of a row that holds only an id: an instance's highest event id, kept when a restart deleted its events
(SQLite, whose ids are per instance), so no later event reuses it. It stands for no event."""
RESTART_FORGETS: Final = (
    # a restart from a step forgets the run's lifecycle events and the events of the steps it runs again
    "DELETE FROM instance_events WHERE instance_pk = %s AND (step_key IS NULL OR step_key IN "
    "(SELECT key FROM steps WHERE instance_pk = %s AND seq >= %s))"
)


def first_row(after: int) -> int:
    """The first row that can hold an event after the cursor ``after`` (the query's ``event_id >=``)."""
    return after // PER_ROW


def history_events(row: tuple[Any, ...], after: int) -> list[HistoryEvent]:
    """The events after cursor ``after`` of a row of :data:`STREAM_EVENTS`."""
    base = int(row[0]) * PER_ROW
    kind = row[1]
    if kind == GAP:
        return []
    if kind not in (PACKED, PACKED_ROLLBACK):
        if base <= after:
            return []
        return [HistoryEvent(base, kind, row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10])]
    status, started, ended = row[12], row[13], row[14]
    attempts: list[list[Any]] = json.loads(row[15]) if row[15] else []
    expanded = packed_events(int(row[11]), int(row[4]))
    last_end = max((j for j, (name, _) in enumerate(expanded) if name == "attempt_ended"), default=-1)
    events: list[HistoryEvent] = []
    for j, (name, number) in enumerate(expanded):
        if base + j <= after:
            continue
        detail = None
        if name == "step_started":
            at = started
        elif name == "step_settled":
            name = "step_completed" if status == "success" else "step_errored"
            at = ended if ended is not None else started
        else:
            assert number is not None
            if number > len(attempts):
                continue  # not stored (cannot happen while the step row and its events are written together)
            attempt = attempts[number - 1]
            if name == "attempt_started":
                at = attempt[0]
            else:
                at = attempt[1] if attempt[1] is not None else attempt[0]
                if attempt[2]:
                    name = "attempt_completed"
                else:
                    name = "attempt_errored"
                    detail = _error_detail(attempt, row[5] if j == last_end else None)
        if kind == PACKED_ROLLBACK:  # an undo handler's events: rollback_step_*, rollback_attempt_*
            name = "rollback_" + name
            if name == "rollback_step_errored":
                detail = _step_error_detail(attempts)
        events.append(HistoryEvent(base + j, name, at, row[3], number, detail, row[6], row[7], row[8], row[9], row[10]))
    return events


def _step_error_detail(attempts: list[list[Any]]) -> str:
    """A failed undo handler's error (its last attempt's): ``rollback_step_errored`` carries it."""
    last = attempts[-1] if attempts else [None, None, False, "Error", ""]
    return json.dumps({"error": {"name": last[3] or "Error", "message": last[4] or ""}}, separators=(",", ":"))


def _error_detail(attempt: list[Any], row_detail: str | None) -> str:
    error: dict[str, object] = {"name": attempt[3] or "Error", "message": attempt[4] or ""}
    if len(attempt) > 5 and attempt[5]:
        error["traceback"] = attempt[5]
    detail: dict[str, object] = {"error": error}
    if row_detail:
        detail.update(json.loads(row_detail))
    return json.dumps(detail, separators=(",", ":"))
