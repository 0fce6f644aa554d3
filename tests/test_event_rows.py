"""A ``step.do`` write stores one packed event row; reading it back gives every event it stands for, in order,
with ids that grow and a cursor that can point inside a row."""

from __future__ import annotations

import json

from stepstone.history import PACKED, PER_ROW, mark, packed_events, step_events
from stepstone.models import Attempt, HistoryEvent, StepRecord
from stepstone.storage.sqlite_schema import step_to_row
from stepstone.storage.stream_sql import first_row, history_events


def _step(attempts: list[Attempt], status: str, *, wake_at: float | None = None) -> StepRecord:
    ended = attempts[-1].end if status in ("success", "error") else None
    return StepRecord("do:charge:1", "do", "charge", 1, 1, status, 100.0, ended, wake_at, attempts=attempts)


def _failed(start: float) -> Attempt:
    return Attempt(start, start + 0.5, False, "KeyError", "'filez'", "Traceback ...")


def _read(rows: list[tuple[int, tuple[object, ...]]], step: StepRecord, after: int = 0) -> list[HistoryEvent]:
    """Rows as STREAM_EVENTS returns them, joined with the step as stored now."""
    stored = step_to_row(1, step)
    attempts_json = stored[14]
    out: list[HistoryEvent] = []
    for row_id, (kind, at, key, attempt, detail, since) in rows:
        row = (row_id, kind, at, key, attempt, detail, step.name, step.count, None, None, None, since)
        row += (step.status, step.started_at, step.ended_at, attempts_json)
        if row_id >= first_row(after):
            out.extend(history_events(row, after))
    return out


def _write(prev_mark: object, step: StepRecord, rows: list[tuple[int, tuple[object, ...]]]) -> object:
    events, now = step_events(prev_mark, step)  # type: ignore[arg-type]
    for event in events:
        rows.append((len(rows) + 1, event))
    return now


def test_one_quick_attempt_is_one_row_of_four_events() -> None:
    step = _step([Attempt(100.0, 100.1, True)], "success")
    events, _ = step_events(None, step)
    assert len(events) == 1 and events[0][0] == PACKED
    rows: list[tuple[int, tuple[object, ...]]] = [(7, events[0])]
    got = _read(rows, step)
    assert [(e.type, e.attempt) for e in got] == [
        ("step_started", None),
        ("attempt_started", 1),
        ("attempt_completed", 1),
        ("step_completed", None),
    ]
    assert [e.event_id for e in got] == [7 * PER_ROW + j for j in range(4)]
    assert [e.at for e in got] == [100.0, 100.0, 100.1, 100.1]


def test_retries_across_writes_read_back_in_order_with_errors_and_delays() -> None:
    rows: list[tuple[int, tuple[object, ...]]] = []
    attempts = [Attempt(100.0)]
    step = _step(attempts, "running")
    m = _write(None, step, rows)  # the attempt marker: started, attempt 1 started
    attempts[0] = _failed(100.0)
    step.status, step.wake_at = "retrying", 102.5
    m = _write(m, step, rows)  # attempt 1 errored, retry in 2 s
    step.status, step.wake_at = "running", None
    attempts.append(Attempt(102.5, 102.6, True))
    step.status, step.ended_at = "success", 102.6
    _write(m, step, rows)
    got = _read(rows, step)
    assert [(e.type, e.attempt) for e in got] == [
        ("step_started", None),
        ("attempt_started", 1),
        ("attempt_errored", 1),
        ("attempt_started", 2),
        ("attempt_completed", 2),
        ("step_completed", None),
    ]
    errored = json.loads(got[2].detail or "{}")
    assert errored == {
        "error": {"name": "KeyError", "message": "'filez'", "traceback": "Traceback ..."},
        "retryDelayMs": 2000,
    }
    ids = [e.event_id for e in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # A cursor anywhere (inside a row too) gives exactly the events after it.
    for i, cursor in enumerate(ids):
        assert [e.event_id for e in _read(rows, step, after=cursor)] == ids[i + 1 :]


def test_a_write_with_more_events_than_a_row_holds_is_split() -> None:
    attempts = [_failed(100.0 + i) for i in range(20)] + [Attempt(200.0, 200.5, True)]
    step = _step(attempts, "success")
    events, now = step_events(None, step)
    assert now == mark(step)
    assert len(events) > 1
    assert all(len(packed_events(int(e[5] or 0), int(e[3] or 0))) <= PER_ROW for e in events)
    rows = [(i + 1, e) for i, e in enumerate(events)]
    got = _read(rows, step)
    assert len(got) == 2 + 2 * len(attempts)
    assert [e.attempt for e in got if e.type == "attempt_started"] == list(range(1, 22))
    assert [e.type for e in got][-2:] == ["attempt_completed", "step_completed"]
    ids = [e.event_id for e in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_a_write_that_adds_nothing_adds_no_row() -> None:
    step = _step([Attempt(100.0, 100.1, True)], "success")
    assert step_events(mark(step), step)[0] == []
