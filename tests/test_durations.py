from __future__ import annotations

import datetime

import pytest

from stepstone.durations import Duration, format_millis, to_millis, to_seconds
from stepstone.errors import ValidationError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0.0),
        (1500, 1500.0),
        (2.5, 2.5),
        ("250", 250.0),
        ("1.5", 1.5),
        ("1 second", 1_000.0),
        ("10 seconds", 10_000.0),
        ("30.5 seconds", 30_500.0),
        ("1 minute", 60_000.0),
        ("1.5 minutes", 90_000.0),
        ("2 hours", 7_200_000.0),
        ("1 day", 86_400_000.0),
        ("7 days", 604_800_000.0),
        ("1 week", 604_800_000.0),
        ("2 weeks", 1_209_600_000.0),
        ("1 month", 30 * 86_400_000.0),
        ("1 year", 365 * 86_400_000.0),
        ("2 years", 730 * 86_400_000.0),
        ("10 SECONDS", 10_000.0),
        ("1 Hour", 3_600_000.0),
        ("0 seconds", 0.0),
        (datetime.timedelta(seconds=10), 10_000.0),
        (datetime.timedelta(days=1, milliseconds=5), 86_400_005.0),
        (datetime.timedelta(microseconds=500), 0.5),
    ],
)
def test_to_millis_accepts(value: Duration, expected: float) -> None:
    assert to_millis(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "5 mins",
            r"invalid duration '5 mins' for step timeout: expected milliseconds or \"<number> <unit>\"",
        ),
        ("1hour", r"invalid duration '1hour' for step timeout: expected"),
        ("1 fortnight", r"invalid duration '1 fortnight' for step timeout: .*unit second, minute, hour, day"),
        ("1  hour", r"invalid duration '1  hour'"),
        (" 1 hour", r"invalid duration ' 1 hour'"),
        ("1 hour ", r"invalid duration '1 hour '"),
        ("-1 hour", r"invalid duration '-1 hour'"),
        ("+1 hour", r"invalid duration '\+1 hour'"),
        ("-5", r"invalid duration '-5'"),
        ("", r"invalid duration '' for step timeout"),
        ("hour", r"invalid duration 'hour'"),
        ("1 hourss", r"invalid duration '1 hourss'"),
        ("1e3", r"invalid duration '1e3'"),
        (".5 seconds", r"invalid duration '.5 seconds'"),
        ("nan", r"invalid duration 'nan'"),
        (-1, r"invalid duration -1 for step timeout: must not be negative"),
        (-0.5, r"invalid duration -0.5 .*must not be negative"),
        (float("nan"), r"invalid duration nan .*finite"),
        (float("inf"), r"invalid duration inf .*finite"),
        (10**400, r"finite"),
        (True, r"invalid duration True for step timeout: expected a number of milliseconds, not a bool"),
        (datetime.timedelta(seconds=-1), r"must not be negative"),
        (None, r"invalid duration None for step timeout"),
        ([1], r"invalid duration \[1\] for step timeout"),
    ],
)
def test_to_millis_rejects(value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        to_millis(value, what="step timeout")  # type: ignore[arg-type]


def test_to_millis_default_what() -> None:
    with pytest.raises(ValidationError, match=r"for duration:"):
        to_millis("soon")


def test_long_value_truncated_in_message() -> None:
    with pytest.raises(ValidationError, match=r"'x{76}\.\.\. for"):
        to_millis("x" * 500)


@pytest.mark.parametrize(("value", "expected"), [(1500, 1.5), ("1 minute", 60.0), ("10 seconds", 10.0)])
def test_to_seconds(value: Duration, expected: float) -> None:
    assert to_seconds(value) == expected


def test_to_seconds_reports_what() -> None:
    with pytest.raises(ValidationError, match="for sleep"):
        to_seconds("x", what="sleep")


@pytest.mark.parametrize(
    ("ms", "expected"),
    [
        (0, "0 ms"),
        (250, "250 ms"),
        (0.5, "0.5 ms"),
        (1_000, "1 second"),
        (10_000, "10 seconds"),
        (1_500, "1.5 seconds"),
        (60_000, "1 minute"),
        (90_000, "1.5 minutes"),
        (3_600_000, "1 hour"),
        (86_400_000, "1 day"),
        (400 * 86_400_000, "400 days"),
        (365 * 86_400_000, "365 days"),
        (100_000, "1.67 minutes"),
        (float("inf"), "inf ms"),
    ],
)
def test_format_millis(ms: float, expected: str) -> None:
    assert format_millis(ms) == expected
