"""Replay after a hibernation reads what it needs and no more, on SQLite and PostgreSQL: a loaded step's attempts
are decoded when first read (a replay reads none), a step loaded settled takes its event mark only if written.
What a user sees does not change: details and the event stream still carry every attempt of a replayed step, a
stored result that does not decode (or no longer fits the step's type) fails the replay as it always did, and a
step whose retry was pending when the instance hibernated records its later attempts once."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from stepstone import Engine, WorkflowEntrypoint
from stepstone.models import Attempt, StepRecord

TRIES: dict[str, int] = {}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_url"))
    return str(request.getfixturevalue("postgres_url"))


class Retried(WorkflowEntrypoint):
    """A step that fails once, an event wait (the instance hibernates), then one more step."""

    async def run(self, event: Any, step: Any) -> Any:
        key = event.instance_id

        def flaky() -> str:
            TRIES[key] = TRIES.get(key, 0) + 1
            if TRIES[key] == 1:
                raise RuntimeError("first attempt fails")
            return "prepared"

        prepared = await step.do("prepare", {"retries": {"limit": 3, "delay": 10, "backoff": "constant"}}, flaky)
        approval = await step.wait_for_event("approval", "approval", timeout="1 hour")
        after = await step.do("after", lambda: "done")
        return {"prepared": prepared, "approval": approval.payload, "after": after}


class SlowRetry(WorkflowEntrypoint):
    """A step whose retry delay hibernates the instance between its attempts."""

    async def run(self, event: Any, step: Any) -> Any:
        key = event.instance_id

        def flaky() -> str:
            TRIES[key] = TRIES.get(key, 0) + 1
            if TRIES[key] == 1:
                raise RuntimeError("first attempt fails")
            return "second"

        first = await step.do("first", lambda: "one")
        return [first, await step.do("flaky", {"retries": {"limit": 2, "delay": 300, "backoff": "constant"}}, flaky)]


@dataclass
class Count:
    n: int


class Typed(WorkflowEntrypoint):
    """A typed step, then an event wait: the replay rebuilds the step's recorded result as a ``Count``."""

    async def run(self, event: Any, step: Any) -> Any:
        async def count() -> Count:
            return Count(3)

        got = await step.do("count", count)
        await step.wait_for_event("go", "go", timeout="1 hour")
        return got.n + 1


async def _until(inst: Any, status: str) -> Any:
    for _ in range(2000):
        got = await inst.status()
        if got.status == status:
            return got
        await asyncio.sleep(0.01)
    raise AssertionError(f"instance stayed {got.status}, wanted {status}")


async def _set_result(url: str, pk: int, name: str, result: str) -> None:
    """Change a recorded step's stored result behind the engine's back (a damaged or older row)."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("UPDATE steps SET result = ? WHERE instance_pk = ? AND name = ?", (result, pk, name))
        return
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("UPDATE steps SET result = %s WHERE instance_pk = %s AND name = %s", (result, pk, name))


def test_attempts_decode_when_first_read() -> None:
    raw = json.dumps([[1.0, 2.0, False, "RuntimeError", "boom", "tb"], [3.0, 4.0, True, None, None]])
    lazy = StepRecord("do\x1fs\x1f1", "do", "s", 1, 1, "success", 1.0, 4.0, attempts_json=raw)
    eager = StepRecord(
        "do\x1fs\x1f1",
        "do",
        "s",
        1,
        1,
        "success",
        1.0,
        4.0,
        attempts=[Attempt(1.0, 2.0, False, "RuntimeError", "boom", "tb"), Attempt(3.0, 4.0, True)],
    )
    assert lazy == eager and repr(lazy) == repr(eager)
    assert [a.success for a in lazy.attempts] == [False, True] and lazy.attempts[0].traceback == "tb"
    lazy.attempts.append(Attempt(5.0))
    assert len(lazy.attempts) == 3  # decoded once: later reads see the same list
    lazy.attempts = []
    assert lazy.attempts == [] and lazy != eager
    assert StepRecord("k", "sleep", "n", 1, 1, "waiting", 1.0).attempts == []
    with pytest.raises(json.JSONDecodeError):  # a damaged column fails where it is read
        _ = StepRecord("k", "do", "n", 1, 1, "success", 1.0, attempts_json="[[1.0,").attempts


async def test_a_replayed_step_keeps_its_attempts_in_details_and_events(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(Retried, name="retried")
        TRIES.pop("r1", None)
        inst = await wf.create(id="r1")
        await _until(inst, "waiting")
        await inst.send_event(type="approval", payload={"ok": True})
        done = await _until(inst, "complete")
        assert done.output == {"prepared": "prepared", "approval": {"ok": True}, "after": "done"}
        assert TRIES["r1"] == 2  # the replay after the event served the step from its record
        doc = await inst.describe()
        prepare = next(s for s in doc["steps"] if s["name"] == "prepare-1")
        assert [a["success"] for a in prepare["attempts"]] == [False, True]
        assert prepare["attempts"][0]["error"]["message"] == "first attempt fails"
        history = await inst.history()
        assert [len(s.attempts) for s in history] == [2, 0, 1]
        types = [(e["type"], e.get("stepName"), e.get("attempt")) async for e in inst.subscribe()]
        assert [t for t in types if t[1] == "prepare"] == [
            ("step_started", "prepare", None),
            ("attempt_started", "prepare", 1),
            ("attempt_errored", "prepare", 1),
            ("attempt_started", "prepare", 2),
            ("attempt_completed", "prepare", 2),
            ("step_completed", "prepare", None),
        ]
        assert [t for t in types if t[1] == "after"] == [
            ("step_started", "after", None),
            ("attempt_started", "after", 1),
            ("attempt_completed", "after", 1),
            ("step_completed", "after", None),
        ]


async def test_a_retry_pending_across_a_hibernation_records_each_attempt_once(url: str) -> None:
    async with Engine(url, poll_interval=0.05, inprocess_wait_s=0.0) as engine:
        wf = engine.register(SlowRetry, name="slow")
        TRIES.pop("s1", None)
        inst = await wf.create(id="s1")
        done = await _until(inst, "complete")
        assert done.output == ["one", "second"]
        history = {s.name: s for s in await inst.history()}
        assert [a.success for a in history["flaky"].attempts] == [False, True]
        types = [(e["type"], e.get("stepName"), e.get("attempt")) async for e in inst.subscribe()]
        assert [t for t in types if t[1] == "flaky"] == [
            ("step_started", "flaky", None),
            ("attempt_started", "flaky", 1),
            ("attempt_errored", "flaky", 1),
            ("attempt_started", "flaky", 2),
            ("attempt_completed", "flaky", 2),
            ("step_completed", "flaky", None),
        ]
        assert [t for t in types if t[1] == "first"] == [
            ("step_started", "first", None),
            ("attempt_started", "first", 1),
            ("attempt_completed", "first", 1),
            ("step_completed", "first", None),
        ]


@pytest.mark.parametrize(
    ("stored", "name", "message"),
    [
        ("{not json", "SerializationError", "stored value '{not json' cannot be decoded"),
        ('{"n":"three"}', "ValidationError", 'step "count-1" result'),
    ],
)
async def test_a_recorded_result_that_does_not_fit_fails_the_replay(
    url: str, stored: str, name: str, message: str
) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(Typed, name="typed")
        inst = await wf.create(id="t1")
        await _until(inst, "waiting")
        await _set_result(url, (await inst.record()).pk, "count", stored)
        await inst.send_event(type="go", payload=None)
        got = await _until(inst, "errored")
        assert got.error is not None and got.error.name == name and message in got.error.message
