"""SQL of the instance event stream shared by both backends (``%s`` placeholders; SQLite swaps in ``?``).

The ``instance_events`` table holds one row per event: lifecycle rows are written by triggers on the
instance's status change (see the schema modules), step rows by the step writes. A row keeps only what its
step cannot tell later (``detail``); reading joins the step as it is stored now for its name, config and output.
"""

from __future__ import annotations

from typing import Any, Final

from stepstone.models import HistoryEvent

STREAM_EVENTS: Final = (
    "SELECT e.event_id, e.type, e.at, e.step_key, e.attempt, e.detail, s.name, s.count, s.result, s.config, "
    "s.event_type FROM instance_events e "
    "LEFT JOIN steps s ON s.instance_pk = e.instance_pk AND s.key = e.step_key "
    "WHERE e.instance_pk = %s AND e.event_id > %s ORDER BY e.event_id LIMIT %s"
)
RESTART_FORGETS: Final = (
    # a restart from a step forgets the run's lifecycle events and the events of the steps it runs again
    "DELETE FROM instance_events WHERE instance_pk = %s AND (step_key IS NULL OR step_key IN "
    "(SELECT key FROM steps WHERE instance_pk = %s AND seq >= %s))"
)


def history_event(row: tuple[Any, ...]) -> HistoryEvent:
    """Map a row of :data:`STREAM_EVENTS`."""
    return HistoryEvent(
        event_id=int(row[0]),
        type=row[1],
        at=row[2],
        step_key=row[3],
        attempt=row[4],
        detail=row[5],
        step_name=row[6],
        step_count=row[7],
        step_result=row[8],
        step_config=row[9],
        step_event_type=row[10],
    )
