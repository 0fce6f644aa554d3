from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from stepstone.errors import LimitExceededError, ValidationError
from stepstone.limits import (
    ID_PATTERN,
    MAX_STEPS,
    Limits,
    check_size,
    validate_batch_size,
    validate_event_timeout_ms,
    validate_event_type,
    validate_instance_id,
    validate_sleep_ms,
    validate_step_name,
    validate_workflow_name,
)

DAY = 86_400_000.0
L = Limits()


def test_defaults() -> None:
    assert dataclasses.asdict(L) == {
        "steps": 10_000,
        "step_result_bytes": 1_048_576,
        "payload_bytes": 1_048_576,
        "instance_state_bytes": 1 << 30,
        "instance_id_length": 100,
        "workflow_name_length": 64,
        "step_name_length": 256,
        "event_type_length": 100,
        "sleep_max_ms": 365 * DAY,
        "event_timeout_min_ms": 1_000.0,
        "event_timeout_max_ms": 365 * DAY,
        "retries_max": 10_000,
        "batch_max": 100,
        "success_retention_ms": 7 * DAY,
        "error_retention_ms": 7 * DAY,
        "cpu_ms": None,
        "max_queued_instances": 2_000_000,
        "creation_rate": None,
    }
    assert MAX_STEPS == 25_000


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"steps": 25_000}, {"steps": 25_000}),
        ({"steps": 1}, {"steps": 1}),
        ({"success_retention": "30 days"}, {"success_retention_ms": 30 * DAY}),
        ({"error_retention_ms": "1 day"}, {"error_retention_ms": DAY}),
        ({"sleep_max_ms": 5_000}, {"sleep_max_ms": 5_000.0}),
        ({"event_timeout_min": "2 seconds"}, {"event_timeout_min_ms": 2_000.0}),
        ({"batch_max": 10, "retries_max": 3}, {"batch_max": 10, "retries_max": 3}),
    ],
)
def test_from_mapping_and_replace(changes: dict[str, object], expected: dict[str, Any]) -> None:
    assert Limits.from_mapping(changes) == dataclasses.replace(L, **expected)
    assert L.replace(**changes) == dataclasses.replace(L, **expected)


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"steps": 25_001}, LimitExceededError, r"limit steps 25001 exceeds the maximum of 25000 steps"),
        ({"steps": 0}, ValidationError, r"limit steps 0 is invalid: expected an integer >= 1"),
        ({"steps": True}, ValidationError, r"limit steps True is invalid"),
        ({"steps": "10"}, ValidationError, r"limit steps '10' is invalid"),
        (
            {"stepz": 5},
            ValidationError,
            r"unknown limit 'stepz': allowed limits are steps, step_result_bytes",
        ),
        ({"success_retention": "forever"}, ValidationError, r"invalid duration 'forever' for limit"),
        ({"sleep_max_ms": 0}, ValidationError, r"limit sleep_max_ms 0.0 is invalid: expected a duration > 0"),
        ({"sleep_max_ms": None}, ValidationError, r"limit sleep_max_ms None is invalid"),
        (
            {"event_timeout_min_ms": 10_000, "event_timeout_max_ms": 5_000},
            ValidationError,
            r"event_timeout_min_ms 10000.0 is above event_timeout_max_ms 5000.0",
        ),
        ({"sleep_max": 1, "sleep_max_ms": 2}, ValidationError, r"limit sleep_max_ms is given twice"),
    ],
)
def test_from_mapping_rejects(changes: dict[str, object], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        Limits.from_mapping(changes)


def test_from_mapping_rejects_non_mapping() -> None:
    with pytest.raises(ValidationError, match=r"limits \[1\] are invalid: expected a mapping"):
        Limits.from_mapping([1])  # type: ignore[arg-type]


@pytest.mark.parametrize(("value", "ok"), [("a", True), ("_a-b", True), ("9", True), ("-a", False), ("", False)])
def test_id_pattern(value: str, ok: bool) -> None:
    assert bool(ID_PATTERN.fullmatch(value)) is ok


@pytest.mark.parametrize("value", ["a", "user-1", "_x", "A_b-9", "x" * 100])
def test_instance_id_ok(value: str) -> None:
    assert validate_instance_id(value, L) == value


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("", ValidationError, r"instance id '' is invalid: expected 1-100 characters: letters, numbers"),
        ("-a", ValidationError, r"instance id '-a' is invalid"),
        ("a b", ValidationError, r"instance id 'a b' is invalid"),
        ("a\n", ValidationError, r"instance id 'a\\n' is invalid"),
        ("é", ValidationError, r"instance id 'é' is invalid"),
        (5, ValidationError, r"instance id 5 is invalid: expected a string"),
        (
            "x" * 101,
            LimitExceededError,
            r"instance id 'x{76}\.\.\. is 101 characters, over the limit of 100$",
        ),
    ],
)
def test_instance_id_rejects(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        validate_instance_id(value, L)


def test_instance_id_custom_limit() -> None:
    with pytest.raises(LimitExceededError, match="over the limit of 3"):
        validate_instance_id("abcd", L.replace(instance_id_length=3))


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("", ValidationError, r"workflow name '' is invalid: Workflow names must be 1-64 characters long"),
        ("my wf", ValidationError, r"may only contain letters, numbers, underscores, or hyphens\.$"),
        ("-wf", ValidationError, r"start with a letter, number, or underscore"),
        (None, ValidationError, r"workflow name None is invalid: expected a string"),
        ("w" * 65, LimitExceededError, r"is 65 characters, over the limit of 64"),
    ],
)
def test_workflow_name_rejects(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        validate_workflow_name(value, L)
    assert validate_workflow_name("my-wf_1", L) == "my-wf_1"


@pytest.mark.parametrize("value", ["", "fetch user", "étape 1 — ok", "x" * 256, "tab-free\x7f"])
def test_step_name_ok(value: str) -> None:
    assert validate_step_name(value, L) == value


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("a\tb", ValidationError, r"step name 'a\\tb' is invalid: control characters \(\\x00-\\x1f\)"),
        ("\x00", ValidationError, r"step name '\\x00' is invalid"),
        (b"x", ValidationError, r"step name b'x' is invalid: expected a string"),
        ("s" * 257, LimitExceededError, r"is 257 characters, over the limit of 256"),
    ],
)
def test_step_name_rejects(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        validate_step_name(value, L)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("", ValidationError, r"event type '' is invalid: expected 1-100 characters"),
        ("a.b", ValidationError, r"event type 'a.b' is invalid"),
        (1, ValidationError, r"event type 1 is invalid: expected a string"),
        ("e" * 101, LimitExceededError, r"is 101 characters, over the limit of 100"),
    ],
)
def test_event_type_rejects(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        validate_event_type(value, L)
    assert validate_event_type("approval-1", L) == "approval-1"


@pytest.mark.parametrize("ms", [0.0, 1.0, 365 * DAY])
def test_sleep_ok(ms: float) -> None:
    assert validate_sleep_ms(ms, L, name="nap") == ms


@pytest.mark.parametrize(
    ("ms", "error", "message"),
    [
        (
            400 * DAY,
            LimitExceededError,
            r'^sleep "nap" duration 400 days \(34560000000 ms\) exceeds the limit of 365 days$',
        ),
        (-1.0, ValidationError, r'sleep "nap" duration -1 ms \(-1 ms\) is invalid: must not be negative'),
        (float("nan"), ValidationError, r'sleep "nap" duration nan is invalid'),
        (float("inf"), LimitExceededError, r"exceeds the limit of 365 days"),
    ],
)
def test_sleep_rejects(ms: float, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        validate_sleep_ms(ms, L, name="nap")


@pytest.mark.parametrize("ms", [1_000.0, DAY, 365 * DAY])
def test_event_timeout_ok(ms: float) -> None:
    assert validate_event_timeout_ms(ms, L, name="w") == ms


@pytest.mark.parametrize(
    ("ms", "error", "message"),
    [
        (
            999.0,
            ValidationError,
            r'wait_for_event "w" timeout 999 ms \(999 ms\) is below the minimum of 1 second',
        ),
        (0.0, ValidationError, r"is below the minimum of 1 second"),
        (366 * DAY, LimitExceededError, r"timeout 366 days \(31622400000 ms\) exceeds the limit of 365 days"),
        (-5.0, ValidationError, r"must not be negative"),
    ],
)
def test_event_timeout_rejects(ms: float, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        validate_event_timeout_ms(ms, L, name="w")


@pytest.mark.parametrize(
    ("nbytes", "limit", "message"),
    [
        (
            1_048_577,
            1_048_576,
            r'^step "load-1" result is 1048577 bytes, over the limit of 1048576 bytes \(1 MiB\)$',
        ),
        (2_000, 1_536, r"is 2000 bytes, over the limit of 1536 bytes \(1.5 KiB\)$"),
        (11, 10, r"is 11 bytes, over the limit of 10 bytes$"),
    ],
)
def test_check_size_rejects(nbytes: int, limit: int, message: str) -> None:
    with pytest.raises(LimitExceededError, match=message):
        check_size(nbytes, limit, what='step "load-1" result')


@pytest.mark.parametrize("nbytes", [0, 1_048_576])
def test_check_size_ok(nbytes: int) -> None:
    check_size(nbytes, 1_048_576, what="x")


@pytest.mark.parametrize(
    ("n", "error", "message"),
    [
        (0, ValidationError, r"batch of 0 instances is invalid: a batch must contain at least 1 instance"),
        (101, LimitExceededError, r"batch of 101 instances exceeds the limit of 100 instances per batch"),
    ],
)
def test_batch_size_rejects(n: int, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        validate_batch_size(n, L)


@pytest.mark.parametrize("n", [1, 100])
def test_batch_size_ok(n: int) -> None:
    validate_batch_size(n, L)
