"""The engine end to end on real SQLite files: steps, retries, sleeps, events, lifecycle, limits."""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import timedelta
from typing import Any

import pytest

from stepstone import (
    Engine,
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidStateError,
    LimitExceededError,
    NonRetryableError,
    ValidationError,
    WorkflowEntrypoint,
    WorkflowTimeoutError,
)
from stepstone.testing import (
    FAKE_CLOCK_ENGINE_OPTIONS,
    FakeClock,
    TestEngine,
    TimeSkippingClock,
    wait_for_event_wait,
    wait_for_status,
    wait_for_step_result,
)

CALLS: dict[str, int] = {}


def called(name: str) -> int:
    CALLS[name] = CALLS.get(name, 0) + 1
    return CALLS[name]


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


class Basic(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a", lambda: called("a"))

        async def plus() -> int:
            called("b")
            return a + 1

        b = await step.do("b", plus)
        await step.sleep("nap", "1 second")
        return {"a": a, "b": b, "payload": event.payload, "id": event.instance_id}


async def test_steps_sleep_and_output(db_url: str) -> None:
    async with Engine(db_url, inprocess_wait_s=0.2) as engine:  # the 1 s sleep hibernates
        wf = engine.register(Basic, name="basic")
        inst = await wf.create(id="one", params={"x": [1, 2]})
        assert (await wait_for_status(inst, "waiting")).status == "waiting"
        status = await wait_for_status(inst, "complete")
        assert status.output == {"a": 1, "b": 2, "payload": {"x": [1, 2]}, "id": "one"}
        assert CALLS == {"a": 1, "b": 1}  # the replay after the sleep ran neither step again
        details = await inst.describe()
        assert [s["name"] for s in details["steps"]] == ["a-1", "b-1", "nap-1"]
        assert [s["type"] for s in details["steps"]] == ["step", "step", "sleep"]


class Flaky(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        def flaky(ctx: Any) -> str:
            if called("flaky") < 3:
                raise RuntimeError(f"boom {ctx.attempt}")
            return f"ok on attempt {ctx['attempt']}"

        return await step.do("flaky", flaky)


async def test_retries_with_default_exponential_delays_on_a_time_skipping_clock(db_url: str) -> None:
    async with TestEngine(db_url) as engine:
        inst = await engine.register(Flaky, name="flaky").create()
        status = await wait_for_status(inst, "complete")
        assert status.output == "ok on attempt 3"
        step = (await inst.describe())["steps"][0]
        attempts = step["attempts"]
        assert [a["success"] for a in attempts] == [False, False, True]
        error = attempts[0]["error"]
        assert (error["name"], error["message"]) == ("RuntimeError", "boom 1")
        assert 'raise RuntimeError(f"boom {ctx.attempt}")' in error["traceback"]  # the user's line, kept
        starts = [a["start"] for a in attempts]
        from datetime import datetime

        t = [datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in starts]
        assert round(t[1] - t[0]) == 10  # default delay 10 s
        assert round(t[2] - t[1]) == 20  # exponential: 10 * 2
        assert step["config"] == {"retries": {"limit": 5, "delay": 10000, "backoff": "exponential"}, "timeout": 600000}


class NonRetry(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        def fail() -> None:
            called("fail")
            raise NonRetryableError("card declined")

        await step.do("charge", fail)


async def test_non_retryable_error_stops_at_once_and_errors_the_instance(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(NonRetry, name="nr").create()
        status = await wait_for_status(inst, "errored")
        assert status.error is not None
        assert (status.error.name, status.error.message) == ("NonRetryableError", "card declined")
        assert CALLS["fail"] == 1


class Caught(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        def bad() -> None:
            called("bad")
            raise ValueError("nope")

        try:
            await step.do("bad", {"retries": {"limit": 0, "delay": 0}}, bad)
        except ValueError as exc:
            caught = f"caught {type(exc).__name__}: {exc}"
        await step.sleep("nap", 10)
        return caught


async def test_caught_step_failure_replays_deterministically(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Caught, name="caught").create()
        status = await wait_for_status(inst, "complete")
        assert status.output == "caught ValueError: nope"
        assert CALLS["bad"] == 1  # the replay after the sleep re-raised the stored error


class Dupes(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        values = [await step.do("same", lambda: called("same")) for _ in range(3)]
        gathered = await asyncio.gather(*(step.do(f"g{i}", lambda i=i: i * 10) for i in range(5)))
        await step.sleep("nap", 5)
        return {"values": values, "gathered": list(gathered)}


async def test_duplicate_names_are_new_steps_and_gather_replays(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Dupes, name="dupes").create()
        status = await wait_for_status(inst, "complete")
        assert status.output == {"values": [1, 2, 3], "gathered": [0, 10, 20, 30, 40]}
        names = [s["name"] for s in (await inst.describe())["steps"]]
        assert names[:3] == ["same-1", "same-2", "same-3"]
        assert CALLS["same"] == 3


class Events(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        got = []
        for i in range(3):
            ev = await step.wait_for_event(f"w{i}", "go", timeout="1 minute")
            got.append(ev.payload)
        try:
            await step.wait_for_event("late", type="never", timeout="1 second")
        except WorkflowTimeoutError as exc:
            got.append(str(exc))
        return got


async def test_events_before_during_and_after_the_wait_and_a_timeout(db_url: str) -> None:
    async with Engine(db_url) as engine:
        wf = engine.register(Events, name="events")
        inst = await wf.create(id="ev")
        await inst.send_event(type="go", payload=1)  # before the wait: buffered
        await inst.send_event({"type": "go", "payload": 2})
        await wait_for_event_wait(inst, "go")
        await inst.send_event(type="go", payload={"third": True})  # during the wait
        status = await wait_for_status(inst, "complete")
        assert status.output == [1, 2, {"third": True}, "Execution timed out after 1000ms"]
        with pytest.raises(InvalidStateError):
            await inst.send_event(type="go", payload=4)  # after: the instance is finished


class Slow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def slow() -> str:
            called("slow")
            await asyncio.sleep(0.3)
            return "slow done"

        first = await step.do("slow", slow)
        second = await step.do("after", lambda: called("after"))
        return [first, second]


async def test_pause_drains_the_running_step_then_resume_finishes(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Slow, name="slow").create()
        await wait_for_status(inst, "running")
        await asyncio.sleep(0.05)
        await inst.pause()
        assert (await inst.status()).status == "waitingForPause"
        await wait_for_status(inst, "paused")
        await asyncio.sleep(0.1)
        assert "after" not in CALLS  # no new step started while paused
        details = await inst.describe()
        assert details["steps"][0]["success"] is True  # the in-flight step finished and was kept
        await inst.resume()
        status = await wait_for_status(inst, "complete")
        assert status.output == ["slow done", 1]
        assert CALLS["slow"] == 1


class Sleeper(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.sleep("long", "1 hour")
        return "woke"


async def test_resume_shifts_a_sleep_by_the_paused_time(db_url: str) -> None:
    clock = FakeClock()
    async with Engine(db_url, clock=clock, **FAKE_CLOCK_ENGINE_OPTIONS) as engine:
        inst = await engine.register(Sleeper, name="sleeper").create()
        await wait_for_status(inst, "waiting")
        clock.advance(1800)  # half-way
        await inst.pause()
        assert (await inst.status()).status == "paused"
        clock.advance(5 * 3600)  # paused for five hours
        await inst.resume()
        await asyncio.sleep(0.1)
        assert (await wait_for_status(inst, "waiting")).status == "waiting"
        clock.advance(1700)  # 100 s short of the shifted wake-up
        await asyncio.sleep(0.1)
        assert (await inst.status()).status == "waiting"
        clock.advance(101)
        assert (await wait_for_status(inst, "complete")).output == "woke"


async def test_terminate_stops_now_and_refuses_finished(db_url: str) -> None:
    async with Engine(db_url) as engine:
        wf = engine.register(Slow, name="slow")
        inst = await wf.create()
        await wait_for_status(inst, "running")
        await inst.terminate()
        assert (await inst.status()).status == "terminated"
        await asyncio.sleep(0.4)
        assert (await inst.status()).status == "terminated"  # the in-flight step could not write
        assert "after" not in CALLS
        details = await inst.describe()
        assert details["steps"][-1]["type"] == "termination"
        with pytest.raises(InvalidStateError, match="terminated"):
            await inst.terminate()


class Counting(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a", lambda: called("a"))
        b = await step.do("b", lambda: called("b"))
        c = await step.do("c", lambda: called("c"))
        return [a, b, c]


async def test_restart_full_and_from_a_step(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Counting, name="counting").create()
        assert (await wait_for_status(inst, "complete")).output == [1, 1, 1]
        await inst.restart()
        assert (await wait_for_status(inst, "complete")).output == [2, 2, 2]
        await inst.restart(from_step={"name": "b"})
        assert (await wait_for_status(inst, "complete")).output == [2, 3, 3]
        with pytest.raises(InvalidStateError, match='step "zzz"'):
            await inst.restart(from_step={"name": "zzz"})


async def test_create_batch_skips_existing_and_create_refuses_them(db_url: str) -> None:
    async with Engine(db_url) as engine:
        wf = engine.register(Counting, name="counting")
        await wf.create(id="a")
        with pytest.raises(InstanceExistsError, match="'a' already exists"):
            await wf.create({"id": "a", "params": {}})
        with pytest.deprecated_call(match="array form"):  # the array form: existing ids skipped, left out
            made = await wf.create_batch([{"id": "a"}, {"id": "b"}, {"id": "c", "params": {"n": 1}}])
        assert [i.id for i in made] == ["b", "c"]
        with pytest.raises(InstanceNotFoundError):
            await wf.get("nope")
        assert (await wf.get("c")).id == "c"


async def test_bad_input_is_refused_with_the_value_and_the_limit(db_url: str) -> None:
    async with Engine(db_url, worker=False) as engine:
        wf = engine.register(Counting, name="counting")
        with pytest.raises(ValidationError, match="bad id"):
            await wf.create(id="bad id")
        with pytest.raises(LimitExceededError, match="100"):
            await wf.create(id="x" * 101)
        with pytest.raises(LimitExceededError, match="1048576"):
            await wf.create(id="big", params={"blob": "x" * (1 << 20)})
        with pytest.raises(ValidationError, match="set"):
            await wf.create(id="weird", params={"s": {1, 2}})
        with pytest.raises(ValidationError, match="at least 1"):
            await wf.create_batch({"instances": []})
        with pytest.raises(LimitExceededError, match="100"):
            await wf.create_batch({"instances": [{"id": f"i{i}"} for i in range(101)]})
        inst = await wf.create(id="ok")
        with pytest.raises(ValidationError, match=r"a\.b"):
            await inst.send_event(type="a.b", payload=1)
        with pytest.raises(ValidationError, match="Workflow names"):
            engine.register(Counting, name="bad name")


class BadSleep(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.sleep("nap", event.payload["d"])


async def test_a_malformed_or_too_long_sleep_errors_the_instance_with_a_clear_message(db_url: str) -> None:
    async with Engine(db_url) as engine:
        wf = engine.register(BadSleep, name="bad-sleep")
        a = await wf.create(params={"d": "5 mins"})
        b = await wf.create(params={"d": "400 days"})
        sa = await wait_for_status(a, "errored")
        sb = await wait_for_status(b, "errored")
        assert sa.error is not None and "5 mins" in sa.error.message
        assert sb.error is not None and "365 days" in sb.error.message


class Unstorable(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        with contextlib.suppress(Exception):
            await step.do("bad", lambda: {1, 2})
        return "swallowed"


async def test_an_unstorable_result_fails_the_instance_naming_step_and_type(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Unstorable, name="unstorable").create()
        status = await wait_for_status(inst, "errored")
        assert status.error is not None
        assert status.error.name == "WorkflowFatalError"
        assert '"bad-1"' in status.error.message and "set" in status.error.message


class StepLimit(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        for i in range(5):
            await step.do(f"s{i}", lambda: None)


async def test_the_step_limit_per_workflow(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(StepLimit, name="limited", limits={"steps": 3}).create()
        status = await wait_for_status(inst, "errored")
        assert status.error is not None and "limit of 3 steps" in status.error.message


class Decorated(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        @step.do(config={"retries": {"limit": 1, "delay": "1 second", "backoff": "constant"}})
        async def fetch(ctx: Any) -> dict[str, Any]:
            return {"n": 2, "attempt": ctx["attempt"], "name": ctx["step"]["name"]}

        @step.do("double")
        def double(fetch: dict[str, Any]) -> int:
            return int(fetch["n"]) * 2

        @step.do("both", concurrent=True)
        async def both(fetch: dict[str, Any], double: int) -> list[Any]:
            return [fetch["name"], double]

        return [await double(), await both()]


async def test_decorator_form_with_dependencies_and_ctx(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Decorated, name="decorated").create()
        status = await wait_for_status(inst, "complete")
        assert status.output == [4, ["fetch", 4]]
        names = [s["name"] for s in (await inst.describe())["steps"]]
        assert names == ["fetch-1", "double-1", "both-1"]  # fetch ran once, shared by both dependants


class Timeout(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def hang() -> None:
            called("hang")
            await asyncio.sleep(5)

        cfg = {"retries": {"limit": 1, "delay": 10, "backoff": "constant"}, "timeout": 50}
        await step.do("hang", cfg, hang)


async def test_timeout_applies_per_attempt(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Timeout, name="timeout").create()
        status = await wait_for_status(inst, "errored")
        assert status.error is not None
        assert (status.error.name, status.error.message) == ("WorkflowTimeoutError", "Execution timed out after 50ms")
        assert CALLS["hang"] == 2


class Week(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        for day in range(7):
            await step.sleep(f"day {day}", timedelta(days=1))
            await step.do(f"work {day}", lambda: None)
        return "a week later"


async def test_a_week_of_sleeps_in_milliseconds(db_url: str) -> None:
    clock = TimeSkippingClock()
    start = clock.now()
    async with TestEngine(db_url, clock=clock) as engine:
        inst = await engine.register(Week, name="week").create()
        assert (await wait_for_status(inst, "complete")).output == "a week later"
        assert clock.now() - start >= 7 * 86400


async def test_delete_and_retention(db_url: str) -> None:
    clock = FakeClock()
    async with Engine(db_url, clock=clock, **FAKE_CLOCK_ENGINE_OPTIONS) as engine:
        wf = engine.register(Counting, name="counting", limits={"success_retention": "1 day"})
        done = await wf.create(id="done")
        await wait_for_status(done, "complete")
        gone = await wf.create(id="gone")
        await wait_for_status(gone, "complete")
        await gone.delete()
        with pytest.raises(InstanceNotFoundError):
            await gone.status()
        clock.advance(2 * 86400)
        assert await engine.storage.purge_expired(now=clock.now()) == 1
        with pytest.raises(InstanceNotFoundError):
            await wf.get("done")
        await wf.create(id="done")  # the id is free again after its retention


async def test_the_worker_purges_expired_instances_beside_its_claims(db_url: str) -> None:
    """The worker's retention purge runs as a task of its own, one small batch at a time: instances created
    meanwhile are claimed and run, and every expired one goes."""
    clock = FakeClock()
    async with Engine(db_url, clock=clock, purge_interval=3600, **FAKE_CLOCK_ENGINE_OPTIONS) as engine:
        engine.storage.purge_batch = 1  # type: ignore[attr-defined]
        engine.storage.purge_budget_s = 0.0  # type: ignore[attr-defined]
        wf = engine.register(Counting, name="counting", limits={"success_retention": "1 day"})
        for i in range(5):
            await wait_for_status(await wf.create(id=f"old{i}"), "complete")
        clock.advance(2 * 86400)
        fresh = await wf.create(id="fresh")  # wakes the worker: it claims, and starts the purge
        await wait_for_status(fresh, "complete")
        for _ in range(1000):
            if (await engine.storage.count_by_status("local", "counting")) == {"complete": 1}:
                break
            await asyncio.sleep(0.01)
        assert (await engine.storage.count_by_status("local", "counting")) == {"complete": 1}
        assert (await wf.get("fresh")).id == "fresh"


async def test_describe_document_shape(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Flaky, name="flaky").create(id="shape")
        await wait_for_status(inst, "waiting", "running")
        doc = await inst.describe()
        json.dumps(doc)  # plain JSON
        for key in (
            "status",
            "params",
            "trigger",
            "versionId",
            "queued",
            "start",
            "end",
            "success",
            "error",
            "output",
            "steps",
            "step_count",
        ):
            assert key in doc


async def test_resume_before_the_pause_drains_cancels_it(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Slow, name="slow").create()
        await wait_for_status(inst, "running")
        await asyncio.sleep(0.05)
        await inst.pause()
        assert (await inst.status()).status == "waitingForPause"
        await inst.resume()
        assert (await inst.status()).status == "running"
        assert (await wait_for_status(inst, "complete")).output == ["slow done", 1]


class Until(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        from datetime import UTC, datetime

        target = datetime.fromtimestamp(event.payload["at"], UTC)
        await step.sleep_until("until datetime", target)
        await step.sleep_until("until ms", event.payload["at"] * 1000 + 60_000)
        await step.sleep_until("in the past", 1000)  # returns at once
        return "done"


async def test_sleep_until_datetime_and_epoch_milliseconds(db_url: str) -> None:
    clock = FakeClock()
    async with Engine(db_url, clock=clock, **FAKE_CLOCK_ENGINE_OPTIONS) as engine:
        inst = await engine.register(Until, name="until").create(params={"at": clock.now() + 3600})
        await wait_for_status(inst, "waiting")
        clock.advance(3599)
        await asyncio.sleep(0.05)
        assert (await inst.status()).status == "waiting"
        clock.advance(2)
        await asyncio.sleep(0.05)
        assert (await wait_for_status(inst, "waiting")).status == "waiting"  # now in the second sleep
        clock.advance(60)
        assert (await wait_for_status(inst, "complete")).output == "done"


class TwoWaiters(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        a, b = await asyncio.gather(
            step.wait_for_event("first", "ping", timeout="1 hour"),
            step.wait_for_event("second", "ping", timeout="1 hour"),
        )
        return [a.payload, b.payload, a.type]


async def test_concurrent_waits_for_one_type_are_served_in_registration_order(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(TwoWaiters, name="two").create()
        await wait_for_event_wait(inst, "ping")
        await inst.send_event(type="ping", payload="one")
        await wait_for_step_result(inst, {"name": "first", "type": "waitForEvent"})
        await inst.send_event(type="ping", payload="two")
        assert (await wait_for_status(inst, "complete")).output == ["one", "two", "ping"]


async def test_a_process_restart_carries_on_from_the_last_completed_step(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Sleeper, name="sleeper").create(id="across")
        await wait_for_status(inst, "waiting")
    clock = FakeClock(start=__import__("time").time() + 7200)
    async with Engine(db_url, clock=clock, **FAKE_CLOCK_ENGINE_OPTIONS) as engine:
        wf = engine.register(Sleeper, name="sleeper")
        assert (await wait_for_status(await wf.get("across"), "complete")).output == "woke"


class Hold(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def hold() -> int:
            CALLS["now"] = CALLS.get("now", 0) + 1
            CALLS["max"] = max(CALLS.get("max", 0), CALLS["now"])
            await asyncio.sleep(0.05)
            CALLS["now"] -= 1
            return 1

        return await step.do("hold", hold)


async def test_per_workflow_concurrency_limit(db_url: str) -> None:
    async with Engine(db_url) as engine:
        wf = engine.register(Hold, name="hold", concurrency=2)
        made = (await wf.create_batch({"instances": [{"id": f"h{i}"} for i in range(8)]})).created
        for inst in made:
            await wait_for_status(inst, "complete")
        assert CALLS["max"] == 2


@pytest.mark.parametrize("return_exceptions", [False, True])
async def test_a_short_sleep_stays_in_process_and_a_sibling_hibernation_keeps_its_wake_up(
    db_url: str, return_exceptions: bool
) -> None:
    class Mixed(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            async def short_branch() -> str:
                await step.sleep("short", 300)  # in process: well under inprocess_wait_s
                return str(await step.do("after short", lambda: "x"))

            waiter = step.wait_for_event("long", "never", timeout="1 hour")  # hibernates the instance
            result = await asyncio.gather(short_branch(), waiter, return_exceptions=return_exceptions)
            return result[0]

    async with Engine(db_url) as engine:
        inst = await engine.register(Mixed, name="mixed").create()
        assert await wait_for_step_result(inst, "after short") == "x"
        await wait_for_event_wait(inst, "never")
        doc = await inst.describe()
        assert "after short-1" in [s["name"] for s in doc["steps"]]  # the short branch went on
        assert doc["status"] == "waiting"
        assert doc["waiting_for"]["kind"] == "waitForEvent"  # only the long wait is left
