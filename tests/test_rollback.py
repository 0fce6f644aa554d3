"""Saga rollbacks through the Python API, on SQLite and PostgreSQL: ``@step.with_rollback`` steps, their
``@fn.undo`` handlers, and ``step.rollback_all`` running them last-in first-out as durable ``rollback`` steps
(recorded, retried with their own config, never run twice once recorded), with the step's ctx, output and the
error; the first failure stops the chain unless ``continue_on_error``; failures raise an ``ExceptionGroup``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stepstone import Engine, WorkflowEntrypoint
from stepstone.errors import InvalidStateError, ValidationError
from stepstone.server import create_app
from stepstone.testing import wait_for_event_wait, wait_for_status

V4 = "/client/v4/accounts/local/workflows"
CALLS: list[str] = []
SEEN: dict[str, Any] = {}
RELEASE: dict[str, asyncio.Event] = {}


@pytest.fixture(autouse=True)
def _fresh() -> None:
    CALLS.clear()
    SEEN.clear()
    RELEASE.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_url"))
    return str(request.getfixturevalue("postgres_url"))


class Order(WorkflowEntrypoint):
    """Three steps with undo handlers, then a failing step; the except block rolls back and re-raises.

    ``payload``: ``fail_undo`` (names of handlers that always fail), ``flaky_undo`` (fail on their first
    attempt), ``continue`` (continue_on_error), ``catch`` (swallow the ExceptionGroup and return its text).
    """

    async def run(self, event: Any, step: Any) -> Any:
        p = event.payload
        fail_undo = set(p.get("fail_undo", []))
        flaky = set(p.get("flaky_undo", []))

        def handler(label: str) -> Any:
            async def undo(error: Any, output: Any) -> None:
                CALLS.append(f"undo {label}")
                SEEN[label] = (type(error).__name__, str(error), output)
                if label in fail_undo or (label in flaky and CALLS.count(f"undo {label}") == 1):
                    raise RuntimeError(f"cannot undo {label}")

            return undo

        try:

            @step.with_rollback("reserve")
            async def reserve() -> dict[str, str]:
                CALLS.append("reserve")
                return {"reservation": "r-1"}

            reserve.undo(handler("reserve"))
            await reserve()

            @step.with_rollback("charge", {"retries": {"limit": 0, "delay": 1}})
            async def charge() -> dict[str, str]:
                CALLS.append("charge")
                return {"charge": "c-1"}

            @charge.undo(config={"retries": {"limit": 2, "delay": 1, "backoff": "constant"}})
            async def undo_charge(ctx: Any, error: Any, output: Any) -> None:
                CALLS.append("undo charge")
                SEEN["charge ctx"] = (ctx.step, ctx.attempt, ctx.config["retries"]["limit"])
                SEEN["charge"] = (type(error).__name__, str(error), output)
                if "charge" in fail_undo or ("charge" in flaky and CALLS.count("undo charge") == 1):
                    raise RuntimeError("cannot refund")

            await charge()

            @step.with_rollback("ship", config={"retries": {"limit": 1, "delay": 1}})
            def ship() -> str:
                CALLS.append("ship")
                return "s-1"

            ship.undo(handler("ship"))
            await ship()

            @step.with_rollback("no undo")
            async def no_undo() -> int:
                return 1

            await no_undo()

            @step.do("confirm", config={"retries": {"limit": 0, "delay": 1}})
            async def confirm() -> None:
                raise ValueError("payment declined")

            await confirm()
        except ValueError as exc:
            try:
                await step.rollback_all(exc, continue_on_error=bool(p.get("continue")))
            except ExceptionGroup as group:
                if p.get("catch"):
                    return {"group": str(group), "errors": [str(e) for e in group.exceptions]}
                raise
            raise
        return "done"


@pytest.fixture
async def engine(url: str) -> AsyncIterator[Engine]:
    async with Engine(url, poll_interval=0.05) as eng:
        eng.register(Order, name="order")
        yield eng


async def test_handlers_run_last_in_first_out_with_output_error_and_ctx(engine: Engine) -> None:
    inst = await engine.workflow("order").create(id="o1", params={})
    status = await wait_for_status(inst, "errored")
    assert status.error is not None and status.error["message"] == "payment declined"
    assert CALLS == ["reserve", "charge", "ship", "undo ship", "undo charge", "undo reserve"]
    assert SEEN["reserve"] == ("ValueError", "payment declined", {"reservation": "r-1"})
    assert SEEN["charge"] == ("ValueError", "payment declined", {"charge": "c-1"})
    assert SEEN["ship"] == ("ValueError", "payment declined", "s-1")
    # the handler's ctx is its step's own: name, count, the attempt that succeeded, the step's resolved config
    assert SEEN["charge ctx"] == ({"name": "charge", "count": 1}, 1, 0)
    steps = await inst.history()
    rollbacks = [s for s in steps if s.kind == "rollback"]
    assert [(s.name, s.count, s.status) for s in rollbacks] == [
        ("ship", 1, "success"),
        ("charge", 1, "success"),
        ("reserve", 1, "success"),
    ]


async def test_a_handler_is_retried_with_its_own_config(engine: Engine) -> None:
    inst = await engine.workflow("order").create(id="o2", params={"flaky_undo": ["charge"]})
    await wait_for_status(inst, "errored")
    assert CALLS.count("undo charge") == 2
    steps = await inst.history()
    undo = next(s for s in steps if (s.kind, s.name) == ("rollback", "charge"))
    assert [a.success for a in undo.attempts] == [False, True]
    assert '"limit":2' in (undo.config or "")


async def test_the_first_failing_handler_stops_the_chain_and_raises_an_exception_group(engine: Engine) -> None:
    inst = await engine.workflow("order").create(id="o3", params={"fail_undo": ["charge"], "catch": True})
    status = await wait_for_status(inst, "complete")
    # the failing handler had its 3 attempts (retries limit 2), then the chain stopped before "reserve"
    assert CALLS[3:] == ["undo ship", "undo charge", "undo charge", "undo charge"]
    assert status.output["errors"] == ["cannot refund"]
    assert "1 undo handler(s)" in status.output["group"]
    steps = await inst.history()
    assert [(s.name, s.status) for s in steps if s.kind == "rollback"] == [("ship", "success"), ("charge", "error")]


async def test_continue_on_error_runs_every_handler_and_groups_the_failures(engine: Engine) -> None:
    inst = await engine.workflow("order").create(
        id="o4", params={"fail_undo": ["ship", "charge"], "continue": True, "catch": True}
    )
    status = await wait_for_status(inst, "complete")
    # ship's handler inherits ship's config (2 attempts), charge's has its own (3 attempts)
    assert CALLS[3:] == ["undo ship", "undo ship", "undo charge", "undo charge", "undo charge", "undo reserve"]
    assert status.output["errors"] == ["cannot undo ship", "cannot refund"]


async def test_an_uncaught_exception_group_errors_the_instance(engine: Engine) -> None:
    inst = await engine.workflow("order").create(id="o5", params={"fail_undo": ["ship"]})
    status = await wait_for_status(inst, "errored")
    assert status.error is not None and status.error["name"] == "ExceptionGroup"
    assert CALLS[-1] == "undo ship"


class Nested(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        @step.with_rollback("one")
        async def one() -> str:
            return "v"

        @one.undo
        async def _(error: Any, value: Any) -> None:
            try:
                await step.rollback_all(error)
            except RuntimeError as exc:
                CALLS.append(f"nested: {exc}")

        await one()
        await step.rollback_all()  # no error: handlers get None
        await step.rollback_all(ValueError("again"))  # the stack is empty now: nothing runs
        return CALLS


async def test_rollback_all_from_a_handler_is_refused_and_an_empty_stack_is_a_no_op(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        engine.register(Nested, name="nested")
        inst = await engine.workflow("nested").create(id="n1")
        status = await wait_for_status(inst, "complete")
        assert len(status.output) == 1 and "while a rollback is running" in status.output[0]


async def test_a_replay_never_runs_a_recorded_handler_again(url: str) -> None:
    # inprocess_wait_s=0: the flaky handler's retry hibernates the instance, so the rollback goes on in a replay
    # (run() from the top: the steps, then rollback_all again), which finds "ship"'s handler recorded.
    async with Engine(url, poll_interval=0.05, inprocess_wait_s=0) as engine:
        engine.register(Order, name="order")
        inst = await engine.workflow("order").create(id="r1", params={"flaky_undo": ["charge"]})
        await wait_for_status(inst, "errored")
    assert CALLS == ["reserve", "charge", "ship", "undo ship", "undo charge", "undo charge", "undo reserve"]
    steps = await _history(url, "r1")
    assert [(s.name, s.status, len(s.attempts)) for s in steps if s.kind == "rollback"] == [
        ("ship", "success", 1),
        ("charge", "success", 2),
        ("reserve", "success", 1),
    ]


async def _history(url: str, instance_id: str) -> list[Any]:
    async with Engine(url, worker=False) as engine:
        engine.register(Order, name="order")
        return await (await engine.workflow("order").get(instance_id)).history()


async def test_the_event_stream_carries_the_rollback_events(engine: Engine) -> None:
    inst = await engine.workflow("order").create(id="e1", params={"fail_undo": ["charge"], "catch": True})
    await wait_for_status(inst, "complete")
    events = [e async for e in inst.subscribe()]
    rollback = [e for e in events if e["type"].startswith("rollback_")]
    assert [(e["type"], e.get("stepName"), e.get("attempt")) for e in rollback] == [
        ("rollback_started", None, None),
        ("rollback_step_started", "ship", None),
        ("rollback_attempt_started", "ship", 1),
        ("rollback_attempt_completed", "ship", 1),
        ("rollback_step_completed", "ship", None),
        ("rollback_step_started", "charge", None),
        ("rollback_attempt_started", "charge", 1),
        ("rollback_attempt_errored", "charge", 1),
        ("rollback_attempt_started", "charge", 2),
        ("rollback_attempt_errored", "charge", 2),
        ("rollback_attempt_started", "charge", 3),
        ("rollback_attempt_errored", "charge", 3),
        ("rollback_step_errored", "charge", None),
        ("rollback_errored", None, None),
    ]
    by_type = {e["type"]: e for e in rollback}
    assert rollback[1]["config"]["retries"]["limit"] == 1  # ship's handler runs with ship's config
    assert by_type["rollback_step_errored"]["error"] == {"name": "RuntimeError", "message": "cannot refund"}
    assert by_type["rollback_attempt_errored"]["error"]["message"] == "cannot refund"
    assert "retryDelayMs" in rollback[7]
    assert events[-1]["type"] == "workflow_completed"


async def test_rest_details_show_rollback_steps_and_the_outcome(engine: Engine) -> None:
    failed = await engine.workflow("order").create(id="d1", params={"fail_undo": ["charge"], "catch": True})
    done = await engine.workflow("order").create(id="d2", params={})
    await wait_for_status(failed, "complete")
    await wait_for_status(done, "errored")
    doc = await failed.describe()
    assert doc["rollback"] == {"outcome": "failed", "error": {"name": "RuntimeError", "message": "cannot refund"}}
    undo = [s for s in doc["steps"] if s["type"] == "rollback"]
    assert [(s["name"], s["success"]) for s in undo] == [("ship-1", True), ("charge-1", False)]
    assert len(undo[1]["attempts"]) == 3
    assert (await done.describe())["rollback"] == {"outcome": "complete", "error": None}


class Booking(WorkflowEntrypoint):
    """Two steps with undo handlers, then it waits (for an event, or in a step that holds until released)."""

    async def run(self, event: Any, step: Any) -> Any:
        for name in ("flight", "hotel"):
            await _booking_step(step, name, event.payload.get("fail", []))()
        if event.payload.get("hold"):

            @step.do("hold", config={"retries": {"limit": 0, "delay": 1}})
            async def hold() -> None:
                CALLS.append("hold")
                await asyncio.sleep(3600)

            await hold()
        await step.wait_for_event("payment", "paid", timeout="1 hour")
        return "booked"


def _booking_step(step: Any, name: str, fail: list[str]) -> Any:
    @step.with_rollback(name, {"retries": {"limit": 0, "delay": 1}})
    async def book() -> str:
        return f"{name} booked"

    @book.undo
    async def cancel(error: Any, output: Any) -> None:
        CALLS.append(f"cancel {output}")
        SEEN["error"] = (type(error).__name__, getattr(error, "name", None), str(error))
        if output in fail:
            raise RuntimeError(f"cannot cancel {output}")

    return book


@pytest.fixture
async def booking(url: str) -> AsyncIterator[Engine]:
    async with Engine(url, poll_interval=0.05) as eng:
        eng.register(Booking, name="booking")
        yield eng


@pytest.mark.parametrize("hold", [False, True], ids=["waiting", "running"])
async def test_terminate_with_rollback_runs_the_handlers_then_terminates(booking: Engine, hold: bool) -> None:
    inst = await booking.workflow("booking").create(id="b1", params={"hold": hold})
    if hold:
        await _until(lambda: "hold" in CALLS)
    else:
        await wait_for_event_wait(inst, "paid")
    await inst.terminate(rollback=True)
    status = await wait_for_status(inst, "terminated")
    assert status.status == "terminated"
    assert CALLS[-2:] == ["cancel hotel booked", "cancel flight booked"]
    assert CALLS.count("hold") == int(hold)  # the step in flight was stopped, and not run again
    assert SEEN["error"] == ("NonRetryableError", "InstanceTerminated", 'instance "b1" was terminated with rollback')
    doc = await inst.describe()
    assert doc["status"] == "terminated"
    assert doc["rollback"] == {"outcome": "complete", "error": None}
    assert [s["name"] for s in doc["steps"] if s["type"] == "rollback"] == ["hotel-1", "flight-1"]
    assert doc["steps"][-1]["type"] == "termination"
    types = [e["type"] for e in [e async for e in inst.subscribe()]]
    assert types[-3:] == ["rollback_step_completed", "rollback_completed", "workflow_terminated"]
    assert "rollback_started" in types


async def test_terminate_with_rollback_stops_at_a_failing_handler_and_still_terminates(booking: Engine) -> None:
    inst = await booking.workflow("booking").create(id="b2", params={"fail": ["hotel booked"]})
    await wait_for_event_wait(inst, "paid")
    await inst.terminate({"rollback": True})  # Cloudflare's options form
    await wait_for_status(inst, "terminated")
    assert CALLS == ["cancel hotel booked"]
    doc = await inst.describe()
    assert doc["rollback"] == {
        "outcome": "failed",
        "error": {"name": "RuntimeError", "message": "cannot cancel hotel booked"},
    }


async def test_terminate_with_rollback_of_a_paused_instance_and_bad_options(booking: Engine) -> None:
    inst = await booking.workflow("booking").create(id="b3", params={})
    await wait_for_event_wait(inst, "paid")
    await inst.pause()
    await wait_for_status(inst, "paused")
    with pytest.raises(ValidationError, match="unknown key 'rolback'"):
        await inst.terminate({"rolback": True})
    with pytest.raises(ValidationError, match="rollback must be True or False"):
        await inst.terminate(rollback="yes")  # type: ignore[arg-type]
    await inst.terminate(rollback=True)
    await wait_for_status(inst, "terminated")
    assert CALLS == ["cancel hotel booked", "cancel flight booked"]
    with pytest.raises(InvalidStateError):
        await inst.terminate(rollback=True)


async def _until(check: Any) -> None:
    for _ in range(2000):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition never held")


async def test_terminate_with_rollback_of_an_instance_with_no_completed_step_terminates_at_once(url: str) -> None:
    async with Engine(url, worker=False) as engine:  # no worker: the instance stays queued
        engine.register(Booking, name="booking")
        inst = await engine.workflow("booking").create(id="q1", params={})
        await inst.terminate(rollback=True)
        assert (await inst.status()).status == "terminated"
        assert (await inst.describe())["rollback"] is None


class Slow(WorkflowEntrypoint):
    """One step whose undo handler waits until the test releases it; then it waits for an event."""

    async def run(self, event: Any, step: Any) -> Any:
        @step.with_rollback("lock", {"retries": {"limit": 0, "delay": 1}, "timeout": "1 hour"})
        async def lock() -> str:
            return "locked"

        @lock.undo
        async def unlock(error: Any, output: Any) -> None:
            CALLS.append("unlocking")
            await RELEASE.setdefault(event.instance_id, asyncio.Event()).wait()

        await lock()
        await step.wait_for_event("never", "never", timeout="1 hour")


async def test_an_instance_rolling_back_is_listed_and_shown_as_rolling_back(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(Slow, name="slow")
        inst = await wf.create(id="rb1")
        other = await wf.create(id="rb2")
        await wait_for_event_wait(inst, "never")
        await wait_for_event_wait(other, "never")
        await inst.terminate(rollback=True)
        assert (await inst.describe())["status"] == "rollingBack"  # requested, before any handler ran
        await _until(lambda: "unlocking" in CALLS)
        for _ in range(2000):  # the handler's attempt is recorded as started once it has run for 50 ms
            doc = await inst.describe()
            if any(s["type"] == "rollback" for s in doc["steps"]):
                break
            await asyncio.sleep(0.01)
        assert doc["status"] == "rollingBack" and doc["rollback"] is None
        assert [s["success"] for s in doc["steps"] if s["type"] == "rollback"] == [None]
        page = await wf.list_instances(status="rollingBack")
        assert [r.id for r in page.items] == ["rb1"] and page.total == 1
        transport = httpx.ASGITransport(app=create_app(engine, loopback_only=True))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8787") as api:
            listed = (await api.get(f"{V4}/slow/instances", params={"status": "rollingBack"})).json()["result"]
            assert [(i["id"], i["status"]) for i in listed] == [("rb1", "rollingBack")]
            got = (await api.get(f"{V4}/slow/instances/rb1")).json()["result"]
            assert got["status"] == "rollingBack"
        RELEASE.setdefault("rb1", asyncio.Event()).set()
        await wait_for_status(inst, "terminated")
        assert (await wf.list_instances(status="rollingBack")).total == 0
        assert (await inst.describe())["rollback"] == {"outcome": "complete", "error": None}
