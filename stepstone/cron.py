"""Five-field cron expressions (minute hour day-of-month month day-of-week), evaluated in UTC like Cloudflare's.

Fields take ``*``, numbers, ranges ``a-b``, lists ``a,b``, steps ``*/n`` and ``a-b/n``, and names (``JAN``..``DEC``,
``SUN``..``SAT``, case-insensitive). Day-of-week 0 and 7 are Sunday. As in Vixie cron, when both day fields are
restricted a day matches if either does.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from stepstone.errors import ValidationError

_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, {m: i + 1 for i, m in enumerate(_MONTHS)}),
    ("day of week", 0, 7, {d: i for i, d in enumerate(_DAYS)}),
)


class CronError(ValidationError):
    """A cron expression that cannot be parsed."""


@dataclass(frozen=True, slots=True)
class Cron:
    """A parsed cron expression; :meth:`matches` a minute, :meth:`next_after` finds the next firing."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def matches(self, when: datetime) -> bool:
        """Whether the schedule fires in the minute of ``when`` (UTC)."""
        when = when.astimezone(UTC)
        if when.minute not in self.minutes or when.hour not in self.hours or when.month not in self.months:
            return False
        return self._day_matches(when)

    def _day_matches(self, when: datetime) -> bool:
        dom = when.day in self.days
        dow = (when.isoweekday() % 7) in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return dow
        if self.any_weekday:
            return dom
        return dom or dow

    def next_after(self, when: datetime) -> datetime | None:
        """The first firing strictly after ``when`` within five years (None if it never fires, e.g. Feb 30)."""
        t = when.astimezone(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        limit = t + timedelta(days=5 * 366)
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + timedelta(days=32)).replace(day=1)
            elif not self._day_matches(t):
                t = t.replace(hour=0, minute=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += timedelta(minutes=1)
            else:
                return t
        return None


def _field(text: str, index: int) -> tuple[frozenset[int], bool]:
    label, low, high, names = _FIELDS[index]
    values: set[int] = set()

    def number(tok: str) -> int:
        tok_up = tok.upper()
        if tok_up in names:
            return names[tok_up]
        if not tok.isdigit():
            raise CronError(f"{label} {tok!r} is not a number{' or a name' if names else ''}")
        n = int(tok)
        if not low <= n <= high:
            raise CronError(f"{label} {n} is out of range {low}-{high}")
        return n

    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(f"{label} step {step_text!r} must be a positive integer")
            step = int(step_text)
        if base == "*":
            start, end = low, high
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = number(a), number(b)
            if start > end:
                raise CronError(f"{label} range {base!r} goes backwards")
        else:
            start = number(base)
            end = high if step_text else start
        values.update(range(start, end + 1, step))
    if index == 4 and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values), text == "*"


_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


def parse_cron(expression: str) -> Cron:
    """Parse a five-field cron expression (or ``@daily`` and friends)."""
    text = _ALIASES.get(expression.strip().lower(), expression.strip())
    parts = text.split()
    if len(parts) != 5:
        raise CronError(f"cron {expression!r} has {len(parts)} field(s), expected 5: minute hour day month weekday")
    fields = [_field(p, i) for i, p in enumerate(parts)]
    return Cron(
        expression=expression,
        minutes=fields[0][0],
        hours=fields[1][0],
        days=fields[2][0],
        months=fields[3][0],
        weekdays=fields[4][0],
        any_day=fields[2][1],
        any_weekday=fields[4][1],
    )


_SAFE = str.maketrans({"*": "x", "/": "q", ",": "k", " ": "_", "?": "z", "@": "a"})
_UNSAFE_RE = re.compile(r"[^A-Za-z0-9_-]")


def cron_instance_id(expression: str, scheduled_ms: int, *, max_length: int = 100) -> str:
    """Cloudflare's ``<cron>-<epoch ms>`` id, made to fit the instance id pattern.

    ``*/30 * * * *`` at 1786001400000 → ``xq30_x_x_x_x-1786001400000``: ``*`` → ``x``, ``/`` → ``q``, ``,`` → ``k``
    and spaces → ``_`` (letters no cron name uses); an id too long keeps a hash of the expression instead.
    """
    safe = _UNSAFE_RE.sub("_", expression.strip().translate(_SAFE))
    suffix = f"-{scheduled_ms}"
    if len(safe) + len(suffix) > max_length:
        digest = hashlib.sha256(expression.encode()).hexdigest()[:16]
        safe = f"{safe[: max_length - len(suffix) - 17]}_{digest}"
    return safe + suffix
