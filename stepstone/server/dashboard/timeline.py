"""The instance page's step timeline: a waterfall on one time axis, built from the instance details document.

One row per step (``step.do``, sleep, event wait), its bar placed by start and end on an axis that runs from the
instance's creation to its end (or now, while it runs). A ``step.do`` nests its attempts, with the retry delays
between them; a sleep and an event wait show how long they are planned to last while they are pending. The
instance's own row splits queued time (created → first run) from running time. Rows are paged, so an instance of
10,000 steps renders one page at a time on the same axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

STEPS_PER_PAGE: Final = 200


def parse_iso(value: object) -> float | None:
    """``2026-11-25T09:24:32.123Z`` as epoch seconds (None for anything else)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def show_time(ts: float | None) -> str:
    """Epoch seconds for people: ``2026-11-25 09:24:32.123 UTC`` (the zone is always shown)."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def show_duration(seconds: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 5 s``, ``3 h 2 min``, ``2 d 4 h``."""
    if seconds is None:
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


@dataclass(slots=True)
class Bar:
    """One segment on the axis, in percent of its width."""

    kind: str
    """CSS class: ``queued``, ``running``, ``ok``, ``failed``, ``retry-wait``, ``sleep``, ``wait``, ``planned``."""
    left: float
    width: float
    label: str


@dataclass(slots=True)
class Row:
    """One step of the timeline."""

    index: int
    name: str
    """The display name with its occurrence suffix (``load-1``)."""
    base: str
    count: int
    type: str
    """``step``, ``sleep``, ``waitForEvent`` or ``termination``."""
    state: str
    start: float | None
    end: float | None
    bars: list[Bar] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    entry: dict[str, Any] = field(default_factory=dict)

    @property
    def restart_type(self) -> str:
        """The step type a restart from this row names (``do``, ``sleep`` or ``waitForEvent``)."""
        return "do" if self.type == "step" else self.type


class Axis:
    """Maps epoch seconds onto 0-100 % between ``begin`` and ``end``."""

    def __init__(self, begin: float, end: float) -> None:
        self.begin = begin
        self.end = max(end, begin + 0.001)

    def place(self, kind: str, start: float | None, end: float | None, label: str) -> Bar | None:
        """A bar from ``start`` to ``end`` (a thin one when they coincide); None without a start."""
        if start is None:
            return None
        span = self.end - self.begin
        left = min(100.0, max(0.0, (start - self.begin) / span * 100))
        right = min(100.0, max(left, ((end if end is not None else start) - self.begin) / span * 100))
        return Bar(kind, round(left, 3), round(max(right - left, 0.25), 3), label)

    def ticks(self, n: int = 4) -> list[tuple[float, str]]:
        """``n + 1`` evenly spaced labels: (percent, offset from the start)."""
        span = self.end - self.begin
        return [(i * 100 / n, "+" + show_duration(span * i / n)) for i in range(n + 1)]


def _state(entry: dict[str, Any]) -> str:
    kind = entry.get("type")
    if kind == "termination":
        return "terminated"
    if kind in ("step", "rollback"):  # an undo handler is drawn as the step it is
        if entry.get("success") is True:
            return "complete"
        if entry.get("success") is False:
            return "errored"
        return "retrying" if entry.get("retries_at") else "running"
    if entry.get("finished"):
        return "complete" if not entry.get("error") else "errored"
    return "sleeping" if kind == "sleep" else "waiting"


def _row(index: int, entry: dict[str, Any], axis: Axis, now: float) -> Row:
    name = str(entry.get("name", ""))
    base, _, suffix = name.rpartition("-")
    count = int(suffix) if suffix.isdigit() else 1
    start, end = parse_iso(entry.get("start")), parse_iso(entry.get("end"))
    kind = str(entry.get("type", "step"))
    state = _state(entry)
    row = Row(index, name, base or name, count, kind, state, start, end, entry=entry)
    if kind in ("step", "rollback"):
        attempts = list(entry.get("attempts") or [])
        previous_end: float | None = None
        for number, attempt in enumerate(attempts, 1):
            a_start, a_end = parse_iso(attempt.get("start")), parse_iso(attempt.get("end"))
            if previous_end is not None and a_start is not None and a_start > previous_end:
                gap = axis.place("retry-wait", previous_end, a_start, f"retry delay before attempt {number}")
                if gap:
                    row.bars.append(gap)
            ok = attempt.get("success")
            cls = "ok" if ok is True else "failed" if ok is False else "running"
            bar = axis.place(cls, a_start, a_end if a_end is not None else now, f"attempt {number}")
            if bar:
                row.bars.append(bar)
            previous_end = a_end
            row.attempts.append({**attempt, "number": number, "start": a_start, "end": a_end})
        retry_at = parse_iso(entry.get("retries_at"))
        if retry_at is not None and previous_end is not None:
            bar = axis.place("planned", previous_end, retry_at, "waiting to retry")
            if bar:
                row.bars.append(bar)
    elif kind in ("sleep", "waitForEvent"):
        planned = parse_iso(entry.get("timeout_at")) if kind == "waitForEvent" else end
        done = state not in ("sleeping", "waiting")
        cls = "sleep" if kind == "sleep" else "wait"
        bar = axis.place(cls, start, end if done and end is not None else now, kind)
        if bar:
            row.bars.append(bar)
        if not done and planned is not None and planned > now:
            bar = axis.place("planned", now, planned, "planned until " + show_time(planned))
            if bar:
                row.bars.append(bar)
    else:
        bar = axis.place("failed", start, start, "terminated")
        if bar:
            row.bars.append(bar)
    return row


@dataclass(slots=True)
class Timeline:
    """The instance's axis, its own queued/running bars and one page of step rows."""

    axis: Axis
    instance_bars: list[Bar]
    rows: list[Row]
    page: int
    pages: int
    total: int
    queued_s: float | None
    running_s: float | None


def build_timeline(doc: dict[str, Any], *, now: float, page: int = 1) -> Timeline:
    """The timeline of an instance details document (``WorkflowInstance.describe()``).

    Args:
        doc: the details document, steps in ascending order.
        now: the current time, where bars of pending work end.
        page: which page of :data:`STEPS_PER_PAGE` rows to build (clamped to the pages there are).
    """
    queued, started, ended = parse_iso(doc.get("queued")), parse_iso(doc.get("start")), parse_iso(doc.get("end"))
    entries: list[dict[str, Any]] = list(doc.get("steps") or [])
    begin = queued if queued is not None else started if started is not None else now
    finish = ended if ended is not None else now
    for entry in entries:  # planned ends (a pending sleep's wake-up) stretch the axis too
        for key in ("end", "timeout_at", "retries_at"):
            ts = parse_iso(entry.get(key))
            if ts is not None and ended is None:
                finish = max(finish, ts)
    axis = Axis(begin, finish)
    bars = [
        b
        for b in (
            axis.place("queued", queued, started if started is not None else now, "queued"),
            axis.place("running", started, ended if ended is not None else now, "running"),
        )
        if b is not None
    ]
    total = len(entries)
    pages = max(1, -(-total // STEPS_PER_PAGE))
    page = min(max(1, page), pages)
    first = (page - 1) * STEPS_PER_PAGE
    rows = [_row(first + i, e, axis, now) for i, e in enumerate(entries[first : first + STEPS_PER_PAGE])]
    queued_s = (started if started is not None else now) - queued if queued is not None else None
    running_s = ((ended if ended is not None else now) - started) if started is not None else None
    return Timeline(axis, bars, rows, page, pages, total, queued_s, running_s)
