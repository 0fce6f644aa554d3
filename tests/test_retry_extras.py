"""stepstone's retry options past Cloudflare's: ``jitter``, ``max_delay`` and ``retry_if`` in a step's
``retries``: validated, shown in the resolved config, applied by the engine (SQLite and PostgreSQL); without
them Cloudflare's shapes and schedule are unchanged."""

from __future__ import annotations

import math
from typing import Any

import pytest

from stepstone import Engine, ValidationError, WorkflowEntrypoint
from stepstone.retry import PREDICATE, RetryConfig, StepConfig, resolve_step_config, retry_delay_ms
from stepstone.testing import wait_for_status

TRIES: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _fresh() -> None:
    TRIES.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_url"))
    return str(request.getfixturevalue("postgres_url"))


def _cfg(**retries: object) -> StepConfig:
    return resolve_step_config({"retries": {"limit": 10, "delay": 1000, **retries}}, step_name="s")


def test_max_delay_caps_the_backoff_and_jitter_draws_below_it() -> None:
    capped = _cfg(max_delay="5 seconds").retries
    assert [retry_delay_ms(capped, n) for n in range(1, 6)] == [1000, 2000, 4000, 5000, 5000]
    full = _cfg(jitter=True, max_delay=4000).retries
    assert full.jitter == 1.0 and _cfg(jitter="full").retries.jitter == 1.0
    assert retry_delay_ms(full, 5, rand=lambda: 0.0) == 4000
    assert retry_delay_ms(full, 5, rand=lambda: 0.75) == 1000
    half = _cfg(jitter=0.5).retries
    assert retry_delay_ms(half, 1, rand=lambda: 0.999999) == pytest.approx(500.0005)
    assert all(500 < retry_delay_ms(half, 1) <= 1000 for _ in range(200))
    # an exponential delay past a float's range is capped too
    assert retry_delay_ms(_cfg(max_delay="1 hour").retries, 5000) == 3_600_000


def test_cloudflare_shapes_keep_their_meaning_and_their_resolved_form() -> None:
    plain = _cfg()
    assert plain.to_dict() == {"retries": {"limit": 10, "delay": 1000, "backoff": "exponential"}, "timeout": 600000}
    assert [retry_delay_ms(plain.retries, n) for n in (1, 2, 3)] == [1000, 2000, 4000]
    assert plain.retries.retries_error(ValueError()) is True


def test_the_resolved_config_shows_them() -> None:
    cfg = _cfg(jitter=0.25, max_delay="1 minute", retry_if=(TimeoutError, ConnectionError))
    assert cfg.to_dict()["retries"] == {
        "limit": 10,
        "delay": 1000,
        "backoff": "exponential",
        "jitter": 0.25,
        "max_delay": 60000,
        "retry_if": ["builtins.TimeoutError", "builtins.ConnectionError"],
    }
    assert _cfg(retry_if=lambda e: True).to_dict()["retries"]["retry_if"] == PREDICATE
    assert _cfg(retry_if=KeyError).retries.retry_if == (KeyError,)
    stored = StepConfig.from_dict(cfg.to_dict())  # read back: the classes cannot be rebuilt, the rest is kept
    assert (stored.retries.jitter, stored.retries.max_delay_ms, stored.retries.retry_if) == (0.25, 60000, None)


def test_retry_if_decides_per_error() -> None:
    by_class = _cfg(retry_if=(TimeoutError,)).retries
    assert by_class.retries_error(TimeoutError()) and not by_class.retries_error(ValueError())
    by_fn = _cfg(retry_if=lambda e: "rate limit" in str(e)).retries
    assert by_fn.retries_error(RuntimeError("rate limit hit")) and not by_fn.retries_error(RuntimeError("no"))

    def broken(e: BaseException) -> bool:
        raise KeyError("oops")

    assert _cfg(retry_if=broken).retries.retries_error(ValueError()) is False


@pytest.mark.parametrize(
    ("retries", "message"),
    [
        ({"jitter": 2}, r'retries.jitter 2 is invalid: expected True, "full" or a fraction from 0 to 1'),
        ({"jitter": "half"}, r"retries.jitter 'half' is invalid"),
        ({"jitter": -0.1}, r"retries.jitter -0.1 is invalid"),
        ({"max_delay": "soon"}, r"invalid duration 'soon' for retries.max_delay"),
        ({"max_delay": -5}, r"invalid duration -5 for retries.max_delay: must not be negative"),
        ({"max_delay": True}, r"retries.max_delay True is invalid: expected a duration"),
        ({"retry_if": "TimeoutError"}, r"retries.retry_if 'TimeoutError' is invalid: expected a function"),
        ({"retry_if": (TimeoutError, "x")}, r"retries.retry_if .* is invalid"),
        ({"retry_if": ()}, r"retries.retry_if \(\) is invalid"),
        ({"retry_if": int}, r"retries.retry_if <class 'int'> is invalid"),
    ],
)
def test_bad_values_name_the_field(retries: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=r'^step config for "s": ' + message):
        resolve_step_config({"retries": {"limit": 1, "delay": 0, **retries}}, step_name="s")


def test_the_dataclass_validates_too() -> None:
    with pytest.raises(ValidationError, match=r"retries.jitter 1.5 is invalid"):
        RetryConfig(jitter=1.5)
    with pytest.raises(ValidationError, match=r"retries.max_delay inf ms is invalid"):
        RetryConfig(max_delay_ms=math.inf)
    with pytest.raises(ValidationError, match=r"retries.retry_if"):
        RetryConfig(retry_if=TimeoutError)  # type: ignore[arg-type]


class Picky(WorkflowEntrypoint):
    """A step failing with TimeoutError twice, then ValueError: retried only while the error is a timeout."""

    async def run(self, event: Any, step: Any) -> Any:
        key = event.instance_id

        def flaky() -> str:
            TRIES[key] = TRIES.get(key, 0) + 1
            if TRIES[key] <= 2:
                raise TimeoutError(f"slow {TRIES[key]}")
            raise ValueError("bad input")

        config = {"retries": {"limit": 5, "delay": 1, "jitter": True, "max_delay": 5, "retry_if": (TimeoutError,)}}
        try:
            await step.do("flaky", config, flaky)
        except ValueError as exc:
            return f"gave up on attempt {TRIES[key]}: {exc}"
        return "unreachable"


async def test_the_engine_retries_only_what_retry_if_allows(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(Picky, name="picky")
        inst = await wf.create(id=f"p-{url[:6]}")
        assert (await wait_for_status(inst, "complete")).output == "gave up on attempt 3: bad input"
        (step,) = (await inst.describe())["steps"]
        assert [a["success"] for a in step["attempts"]] == [False, False, False]
        assert step["config"]["retries"] == {
            "limit": 5,
            "delay": 1,
            "backoff": "exponential",
            "jitter": 1,
            "max_delay": 5,
            "retry_if": ["builtins.TimeoutError"],
        }
