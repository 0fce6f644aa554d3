"""The instance event stream (Cloudflare's ``subscribe``) over the Python API, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stepstone import Engine, WorkflowEntrypoint
from stepstone.errors import InstanceNotFoundError, ValidationError

GATES: dict[str, asyncio.Event] = {}
TRIES: dict[str, int] = {}


class Journey(WorkflowEntrypoint):
    """A retried step, an in-process sleep, an event wait, a step the test holds (to pause during), one more."""

    async def run(self, event: Any, step: Any) -> Any:
        key = event.instance_id

        def flaky() -> str:
            TRIES[key] = TRIES.get(key, 0) + 1
            if TRIES[key] == 1:
                raise RuntimeError("first attempt fails")
            return "prepared"

        await step.do("flaky", {"retries": {"limit": 2, "delay": 10, "backoff": "constant"}}, flaky)
        await step.sleep("nap", 10)
        approval = await step.wait_for_event("approval", "approval", timeout="1 hour")

        async def gate() -> str:
            await GATES[key].wait()
            return "opened"

        await step.do("gate", gate)
        await step.do("secret", {"sensitive": "output"}, lambda: "s3cret")
        return {"approved": approval.payload["ok"]}


def _brief(ev: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(x for x in (ev["type"], ev.get("stepName"), ev.get("attempt")) if x is not None)


async def _until(events: list[dict[str, Any]], pred: Callable[[dict[str, Any]], bool], what: str) -> None:
    for _ in range(1000):
        if any(pred(e) for e in events):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {what} event; got {[_brief(e) for e in events]}")


def _of(events: list[dict[str, Any]], kind: str, step: str | None = None) -> dict[str, Any]:
    return next(e for e in events if e["type"] == kind and (step is None or e.get("stepName") == step))


BEFORE_PAUSE = [
    ("workflow_queued",),
    ("workflow_started",),
    ("workflow_running",),
    ("step_started", "flaky"),
    ("attempt_started", "flaky", 1),
    ("attempt_errored", "flaky", 1),
    ("attempt_started", "flaky", 2),
    ("attempt_completed", "flaky", 2),
    ("step_completed", "flaky"),
    ("sleep_started", "nap"),
    ("sleep_completed", "nap"),
    ("wait_started", "approval"),
    ("workflow_waiting",),
    ("workflow_running",),
    ("wait_completed", "approval"),
    ("step_started", "gate"),
    ("attempt_started", "gate", 1),
    ("workflow_waiting_for_pause",),
    ("attempt_completed", "gate", 1),
    ("step_completed", "gate"),
    ("workflow_paused",),
    ("workflow_queued",),
    ("workflow_running",),
    ("step_started", "secret"),
    ("attempt_started", "secret", 1),
    ("attempt_completed", "secret", 1),
    ("step_completed", "secret"),
    ("workflow_completed",),
]
AFTER_RESTART = [
    # the steps before the one restarted from keep their events; the run's lifecycle events go
    *BEFORE_PAUSE[3:12],
    BEFORE_PAUSE[14],
    ("workflow_queued",),
    ("workflow_started",),
    ("workflow_running",),
    ("step_started", "gate"),
    ("attempt_started", "gate", 1),
    ("attempt_completed", "gate", 1),
    ("step_completed", "gate"),
    ("step_started", "secret"),
    ("attempt_started", "secret", 1),
    ("attempt_completed", "secret", 1),
    ("step_completed", "secret"),
    ("workflow_completed",),
]


async def _journey(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(Journey, name="journey")
        GATES["j1"] = asyncio.Event()
        TRIES.pop("j1", None)
        inst = await wf.create(id="j1", params={"who": "ann"})
        events: list[dict[str, Any]] = []

        async def collect() -> None:
            async for ev in inst.subscribe():
                events.append(ev)

        reader = asyncio.create_task(collect())
        await _until(events, lambda e: e["type"] == "workflow_waiting", "workflow_waiting")
        await inst.send_event(type="approval", payload={"ok": True})
        await _until(events, lambda e: e["type"] == "attempt_started" and e["stepName"] == "gate", "gate attempt")
        await inst.pause()
        await _until(events, lambda e: e["type"] == "workflow_waiting_for_pause", "waiting_for_pause")
        GATES["j1"].set()
        await _until(events, lambda e: e["type"] == "workflow_paused", "workflow_paused")
        await inst.resume()
        await asyncio.wait_for(reader, 20)  # the stream ends by itself after workflow_completed

        assert [_brief(e) for e in events] == BEFORE_PAUSE
        ids = [e["eventId"] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        assert all(e["instanceId"] == "j1" and isinstance(e["timestamp"], int) for e in events)
        assert _of(events, "workflow_started")["params"] == {"who": "ann"}
        assert _of(events, "step_started", "flaky")["config"] == {
            "retries": {"limit": 2, "delay": 10, "backoff": "constant"},
            "timeout": 600000,
        }
        errored = _of(events, "attempt_errored")
        assert errored["retryDelayMs"] == 10
        assert errored["error"]["name"] == "RuntimeError"
        assert errored["error"]["message"] == "first attempt fails"
        assert 'raise RuntimeError("first attempt fails")' in errored["error"]["traceback"]  # the user's line
        assert _of(events, "step_completed", "flaky")["output"] == "prepared"
        assert _of(events, "sleep_started")["durationMs"] == 10
        assert _of(events, "wait_started")["eventType"] == "approval"
        assert _of(events, "step_completed", "secret")["output"] == "[REDACTED]"
        assert _of(events, "workflow_completed")["output"] == {"approved": True}

        # a subscription after the end replays the same events and ends; a cursor resumes after its event
        again = [ev async for ev in inst.subscribe()]
        assert again == events
        cut = events[10]["eventId"]
        assert [ev async for ev in inst.subscribe(cursor=cut)] == events[11:]
        assert [ev async for ev in inst.subscribe({"cursor": events[-1]["eventId"]})] == []
        # a filter keeps only its types, and the stream still ends at the terminal event it leaves out
        only = [ev async for ev in inst.subscribe(filter=["attempt_errored", "step_completed"])]
        assert [_brief(e) for e in only] == [
            ("attempt_errored", "flaky", 1),
            ("step_completed", "flaky"),
            ("step_completed", "gate"),
            ("step_completed", "secret"),
        ]

        await inst.restart({"name": "gate"})
        after = [ev async for ev in inst.subscribe()]
        assert [_brief(e) for e in after] == AFTER_RESTART
        assert after[:10] == events[3:12] + events[14:15]
        assert min(e["eventId"] for e in after[10:]) > ids[-1]  # ids are never handed out twice


def test_journey_sqlite(db_url: str) -> None:
    asyncio.run(_journey(db_url))


def test_journey_postgres(postgres_url: str) -> None:
    asyncio.run(_journey(postgres_url))


def test_bad_options_and_unknown_instance(db_url: str) -> None:
    async def main() -> None:
        async with Engine(db_url) as engine:
            wf = engine.register(Journey, name="journey")
            GATES["j2"] = asyncio.Event()
            inst = await wf.create(id="j2")
            with pytest.raises(ValidationError, match="unknown event type 'workflow_done'"):
                inst.subscribe(filter=["workflow_done"])
            with pytest.raises(ValidationError, match="filter must be a list"):
                inst.subscribe(filter="workflow_completed")  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match="cursor"):
                inst.subscribe(cursor=-1)
            with pytest.raises(ValidationError, match="cursor"):
                inst.subscribe(cursor="5")  # type: ignore[arg-type]
            with pytest.raises(ValidationError, match="unknown key 'from'"):
                inst.subscribe({"from": 1})
            await inst.terminate()
            assert [e["type"] async for e in inst.subscribe()][-1] == "workflow_terminated"
            await inst.delete()
            with pytest.raises(InstanceNotFoundError):
                async for _ in inst.subscribe():
                    pass

    asyncio.run(main())


def test_events_deleted_with_the_instance(db_url: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with Engine(db_url) as engine:
            wf = engine.register(Journey, name="journey")
            GATES["j3"] = asyncio.Event()
            inst = await wf.create(id="j3")
            await inst.terminate()
            await inst.delete()

    asyncio.run(main())
    with sqlite3.connect(tmp_path / "stepstone.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM instance_events").fetchone()[0] == 0
