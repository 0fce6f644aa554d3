from __future__ import annotations

import datetime
import math

import pytest

from stepstone.errors import LimitExceededError, ValidationError
from stepstone.retry import (
    RetryConfig,
    StepConfig,
    resolve_step_config,
    retry_delay_ms,
    will_retry,
)


def _delay(ctx: object, error: BaseException) -> str:
    return "1 second"


def test_defaults() -> None:
    cfg = StepConfig()
    assert cfg.retries == RetryConfig(limit=5, delay_ms=10_000.0, backoff="exponential", delay_fn=None)
    assert cfg.timeout_ms == 600_000.0
    assert cfg.sensitive is False
    assert resolve_step_config(None, step_name="s") == cfg


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"limit": -1}, r"retries.limit -1 is invalid: expected an integer >= 0"),
        ({"limit": True}, r"retries.limit True is invalid"),
        ({"limit": 1.5}, r"retries.limit 1.5 is invalid"),
        ({"delay_ms": -1.0}, r"retries.delay -1.0 ms is invalid: expected a finite number >= 0"),
        ({"delay_ms": math.inf}, r"retries.delay inf ms is invalid"),
        ({"delay_ms": math.nan}, r"retries.delay nan ms is invalid"),
        (
            {"backoff": "random"},
            r"retries.backoff 'random' is invalid: expected constant, linear or exponential",
        ),
        ({"delay_fn": 5}, r"retries.delay_fn 5 is invalid: expected a callable"),
    ],
)
def test_retry_config_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RetryConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"timeout_ms": 0.0}, r"timeout 0.0 ms is invalid: expected a finite number > 0"),
        ({"timeout_ms": -5.0}, r"timeout -5.0 ms is invalid"),
        ({"timeout_ms": math.inf}, r"timeout inf ms is invalid"),
        ({"sensitive": "output"}, r"sensitive 'output' is invalid: expected a bool"),
        ({"retries": {"limit": 1}}, r"retries \{'limit': 1\} is invalid: expected a RetryConfig"),
    ],
)
def test_step_config_rejects(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StepConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, StepConfig()),
        (
            {"retries": {"limit": 0, "delay": 100000, "backoff": "exponential"}, "timeout": "15 minutes"},
            StepConfig(RetryConfig(0, 100_000.0, "exponential"), 900_000.0),
        ),
        (
            {"retries": {"limit": 3, "delay": "1 second"}},
            StepConfig(RetryConfig(3, 1_000.0, "exponential")),
        ),
        ({"retries": {"limit": 1}}, StepConfig(RetryConfig(limit=1))),
        ({"retries": {"backoff": "linear"}}, StepConfig(RetryConfig(backoff="linear"))),
        ({"retries": {"delay": datetime.timedelta(seconds=2)}}, StepConfig(RetryConfig(delay_ms=2_000.0))),
        ({"retries": {"limit": 2.0}}, StepConfig(RetryConfig(limit=2))),
        ({"retries": {}}, StepConfig()),
        ({"timeout": 1}, StepConfig(timeout_ms=1.0)),
        ({"timeout": "1 minute"}, StepConfig(timeout_ms=60_000.0)),
        ({"sensitive": "output"}, StepConfig(sensitive=True)),
        ({"retries": None, "timeout": None, "sensitive": None}, StepConfig()),
        (
            {"retries": {"limit": 10_000, "delay": 0, "backoff": "constant"}},
            StepConfig(RetryConfig(10_000, 0.0, "constant")),
        ),
    ],
)
def test_resolve_dict(config: dict[str, object], expected: StepConfig) -> None:
    assert resolve_step_config(config, step_name="s") == expected


def test_resolve_dynamic_delay() -> None:
    cfg = resolve_step_config({"retries": {"limit": 2, "delay": _delay}}, step_name="s")
    assert cfg.retries.delay_fn is _delay
    assert cfg.retries.delay_ms == 10_000.0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"retry": {}}, r"unknown key 'retry': allowed keys are retries, timeout, sensitive"),
        (
            {"retries": {"limit": 1, "factor": 3}},
            r"unknown key 'factor' in retries: allowed keys are limit, delay, backoff, jitter, max_delay, retry_if",
        ),
        ({"retries": 3}, r"retries 3 is invalid: expected a dict"),
        ({"retries": {"limit": -1}}, r"retries.limit -1 is invalid: expected an integer >= 0"),
        ({"retries": {"limit": "3"}}, r"retries.limit '3' is invalid"),
        ({"retries": {"limit": True}}, r"retries.limit True is invalid"),
        ({"retries": {"delay": "5 mins"}}, r"invalid duration '5 mins' for retries.delay"),
        ({"retries": {"delay": -1}}, r"invalid duration -1 for retries.delay: must not be negative"),
        ({"retries": {"delay": None}}, r"retries.delay None is invalid: expected a duration"),
        ({"retries": {"delay": True}}, r"retries.delay True is invalid: expected a duration"),
        ({"retries": {"delay": "[dynamic]"}}, r"invalid duration '\[dynamic\]'"),
        ({"retries": {"backoff": "random"}}, r"retries.backoff 'random' is invalid: expected constant"),
        ({"retries": {"backoff": 1}}, r"retries.backoff 1 is invalid"),
        ({"timeout": 0}, r"timeout 0 is invalid: expected a duration > 0"),
        ({"timeout": "0 seconds"}, r"timeout '0 seconds' is invalid: expected a duration > 0"),
        ({"timeout": "soon"}, r"invalid duration 'soon' for timeout"),
        ({"timeout": [1]}, r"timeout \[1\] is invalid: expected a duration"),
        ({"sensitive": True}, r"sensitive True is invalid: expected \"output\""),
        ({"sensitive": "input"}, r"sensitive 'input' is invalid"),
    ],
)
def test_resolve_rejects(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=r'^step config for "my step"(: | has ).*' + message):
        resolve_step_config(config, step_name="my step")


def test_resolve_rejects_non_mapping() -> None:
    with pytest.raises(ValidationError, match=r'^step config for "x" is invalid: expected a dict or StepConfig'):
        resolve_step_config([1], step_name="x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "config",
    [{"retries": {"limit": 20_000}}, StepConfig(RetryConfig(limit=20_000))],
)
def test_resolve_retry_limit(config: dict[str, object] | StepConfig) -> None:
    with pytest.raises(
        LimitExceededError,
        match=r'^step "x": retries.limit 20000 exceeds the limit of 10000 retries per step$',
    ):
        resolve_step_config(config, step_name="x")


def test_resolve_custom_max_retries() -> None:
    with pytest.raises(LimitExceededError, match="limit of 3 retries"):
        resolve_step_config({"retries": {"limit": 4}}, step_name="x", max_retries=3)
    assert resolve_step_config({"retries": {"limit": 3}}, step_name="x", max_retries=3).retries.limit == 3


def test_resolve_step_config_instance_returned() -> None:
    cfg = StepConfig(timeout_ms=5.0)
    assert resolve_step_config(cfg, step_name="x") is cfg


@pytest.mark.parametrize(
    ("backoff", "base", "delays"),
    [
        ("constant", 1_000.0, [1_000.0, 1_000.0, 1_000.0]),
        ("linear", 1_000.0, [1_000.0, 2_000.0, 3_000.0]),
        ("exponential", 10_000.0, [10_000.0, 20_000.0, 40_000.0, 80_000.0, 160_000.0]),
        ("exponential", 0.0, [0.0, 0.0]),
    ],
)
def test_retry_delay_ms(backoff: str, base: float, delays: list[float]) -> None:
    retries = RetryConfig(delay_ms=base, backoff=backoff)  # type: ignore[arg-type]
    assert [retry_delay_ms(retries, n) for n in range(1, len(delays) + 1)] == delays


@pytest.mark.parametrize(("backoff", "expected"), [("constant", 500.0), ("linear", 1_500.0), ("exponential", 2_000.0)])
def test_retry_delay_ms_base_override(backoff: str, expected: float) -> None:
    retries = RetryConfig(delay_ms=99.0, backoff=backoff)  # type: ignore[arg-type]
    assert retry_delay_ms(retries, 3, base_ms=500.0) == expected


def test_retry_delay_ms_overflow_is_inf() -> None:
    assert retry_delay_ms(RetryConfig(limit=10_000), 10_000) == math.inf


@pytest.mark.parametrize("attempt", [0, -1, True])
def test_retry_delay_ms_rejects_attempt(attempt: int) -> None:
    with pytest.raises(ValidationError, match=f"failed attempt {attempt!r} is invalid: expected an integer >= 1"):
        retry_delay_ms(RetryConfig(), attempt)


@pytest.mark.parametrize(
    ("limit", "attempt", "expected"),
    [(0, 1, False), (1, 1, True), (1, 2, False), (5, 5, True), (5, 6, False)],
)
def test_will_retry(limit: int, attempt: int, expected: bool) -> None:
    assert will_retry(RetryConfig(limit=limit), attempt) is expected


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (
            StepConfig(),
            {"retries": {"limit": 5, "delay": 10000, "backoff": "exponential"}, "timeout": 600000},
        ),
        (
            StepConfig(RetryConfig(1, 1.5, "linear"), 2.5, sensitive=True),
            {
                "retries": {"limit": 1, "delay": 1.5, "backoff": "linear"},
                "timeout": 2.5,
                "sensitive": "output",
            },
        ),
        (
            StepConfig(RetryConfig(delay_fn=_delay)),
            {"retries": {"limit": 5, "delay": "[dynamic]", "backoff": "exponential"}, "timeout": 600000},
        ),
    ],
)
def test_to_dict(cfg: StepConfig, expected: dict[str, object]) -> None:
    out = cfg.to_dict()
    assert out == expected
    assert type(out["timeout"]) is type(expected["timeout"])


@pytest.mark.parametrize(
    "cfg",
    [
        StepConfig(),
        StepConfig(RetryConfig(0, 250.0, "constant"), 1_000.0, sensitive=True),
        StepConfig(RetryConfig(3, 0.5, "linear"), 0.25),
    ],
)
def test_from_dict_round_trip(cfg: StepConfig) -> None:
    assert StepConfig.from_dict(cfg.to_dict()) == cfg


def test_from_dict_dynamic() -> None:
    cfg = StepConfig.from_dict(StepConfig(RetryConfig(limit=2, delay_fn=_delay)).to_dict())
    assert cfg == StepConfig(RetryConfig(limit=2))


def test_from_dict_rejects() -> None:
    with pytest.raises(ValidationError, match=r"^stored step config has unknown key 'x'"):
        StepConfig.from_dict({"x": 1})
