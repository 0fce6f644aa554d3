"""Durations: Cloudflare's ``number | "<n> <unit>"`` form, plus :class:`datetime.timedelta`.

A number is milliseconds (Cloudflare's rule). A string is either a plain number of milliseconds or exactly
``"<n> <unit>"`` / ``"<n> <unit>s"`` with one space, ``n`` an unsigned integer or decimal and ``unit`` one of
second, minute, hour, day, week, month (30 days) or year (365 days). Anything else is rejected, unlike
Cloudflare's local parser, which reads ``"5 mins"`` as 5 ms.
"""

from __future__ import annotations

import datetime
import math
import re
from typing import TypeAlias

from stepstone.errors import ValidationError

__all__ = ["UNIT_MILLIS", "Duration", "format_millis", "to_millis", "to_seconds"]

Duration: TypeAlias = int | float | str | datetime.timedelta
"""A duration: milliseconds as a number, ``"<n> <unit>[s]"``, or a :class:`datetime.timedelta`."""

_SECOND = 1_000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR

UNIT_MILLIS: dict[str, int] = {
    "second": _SECOND,
    "minute": _MINUTE,
    "hour": _HOUR,
    "day": _DAY,
    "week": 7 * _DAY,
    "month": 30 * _DAY,
    "year": 365 * _DAY,
}
"""Milliseconds per unit. A month is 30 days and a year 365 days."""

_NUMBER = r"\d+(?:\.\d+)?"
_PLAIN_RE = re.compile(_NUMBER)
_UNIT_RE = re.compile(rf"({_NUMBER}) ([a-zA-Z]+)")

_EXPECTED = 'expected milliseconds or "<number> <unit>" with unit second, minute, hour, day, week, month or year'


def _invalid(value: object, what: str, reason: str = _EXPECTED) -> ValidationError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ValidationError(f"invalid duration {shown} for {what}: {reason}")


def _check_ms(ms: float, value: object, what: str) -> float:
    if math.isnan(ms) or math.isinf(ms):
        raise _invalid(value, what, "must be a finite number of milliseconds")
    if ms < 0:
        raise _invalid(value, what, "must not be negative")
    return ms


def _parse_string(value: str, what: str) -> float:
    if _PLAIN_RE.fullmatch(value):
        return float(value)
    match = _UNIT_RE.fullmatch(value)
    if match is None:
        raise _invalid(value, what)
    number, unit = match.group(1), match.group(2).lower()
    per_unit = UNIT_MILLIS.get(unit)
    if per_unit is None and unit.endswith("s"):
        per_unit = UNIT_MILLIS.get(unit[:-1])
    if per_unit is None:
        raise _invalid(value, what)
    return float(number) * per_unit


def to_millis(value: Duration, *, what: str = "duration") -> float:
    """Convert a duration to milliseconds.

    Cloudflare's local engine counts a year as 365.25 days; we use 365 so that ``"1 year"`` fits the
    365-day sleep cap. A month is 30 days in both.

    Args:
        value: milliseconds (int or float, not bool), a :class:`datetime.timedelta`, a plain number of
            milliseconds as a string, or ``"<n> <unit>"`` / ``"<n> <unit>s"`` (unit case-insensitive).
        what: what the duration is for, used in error messages (``"step timeout"``).

    Returns:
        The duration in milliseconds, finite and not negative.

    Raises:
        ValidationError: the value is of the wrong type, malformed, negative, NaN or infinite.
    """
    if isinstance(value, bool):
        raise _invalid(value, what, "expected a number of milliseconds, not a bool")
    if isinstance(value, int):
        try:
            ms = float(value)
        except OverflowError:
            raise _invalid(value, what, "must be a finite number of milliseconds") from None
    elif isinstance(value, float):
        ms = value
    elif isinstance(value, datetime.timedelta):
        ms = value / datetime.timedelta(milliseconds=1)
    elif isinstance(value, str):
        ms = _parse_string(value, what)
    else:
        raise _invalid(value, what)
    return _check_ms(ms, value, what)


def to_seconds(value: Duration, *, what: str = "duration") -> float:
    """Convert a duration to seconds: :func:`to_millis` divided by 1000.

    Args:
        value: a duration, as for :func:`to_millis`.
        what: what the duration is for, used in error messages.

    Returns:
        The duration in seconds.

    Raises:
        ValidationError: as for :func:`to_millis`.
    """
    return to_millis(value, what=what) / 1000


def _number(x: float) -> str:
    rounded = round(x, 2)
    if rounded == int(rounded):
        return str(int(rounded))
    return f"{rounded:.2f}".rstrip("0").rstrip(".")


def format_millis(ms: float) -> str:
    """A human form of a duration for messages: ``"250 ms"``, ``"1.5 minutes"``, ``"400 days"``.

    The unit is the largest of second, minute, hour and day that the duration reaches; the number is
    rounded to two decimals.

    Args:
        ms: the duration in milliseconds.

    Returns:
        The human form.
    """
    if math.isnan(ms) or math.isinf(ms):
        return f"{ms} ms"
    magnitude = abs(ms)
    for unit in ("day", "hour", "minute", "second"):
        per_unit = UNIT_MILLIS[unit]
        if magnitude >= per_unit:
            text = _number(ms / per_unit)
            return f"{text} {unit}" if text in ("1", "-1") else f"{text} {unit}s"
    return f"{_number(ms)} ms"
