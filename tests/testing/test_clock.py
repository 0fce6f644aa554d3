"""The time-skipping clock: a week of sleeps in no time, real I/O in steps untouched, skips only to wake-ups."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from stepstone import WorkflowEntrypoint, WorkflowEvent, WorkflowStep, WorkflowTimeoutError
from stepstone.testing import TestEngine, TimeSkippingClock, wait_for_event_wait, wait_for_status

DAY = 86400.0


class Week(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        days = []
        for day in range(7):
            days.append(await step.do(f"day {day}", lambda day=day: day))
            await step.sleep("a day", "1 day")
        return days


async def test_a_week_of_sleeps_finishes_with_a_week_of_virtual_time(db_url: str) -> None:
    clock = TimeSkippingClock()
    async with TestEngine(db_url, clock=clock) as engine:
        wf = engine.register(Week, name="week")
        status = await wait_for_status(await wf.create(), "complete", timeout=30)
    assert status.output == [0, 1, 2, 3, 4, 5, 6]
    assert clock.elapsed >= 7 * DAY
    assert clock.skipped >= 7 * DAY - 60  # all but the real milliseconds the steps took was skipped
    assert clock.jumps >= 7


class _Slow(BaseHTTPRequestHandler):
    calls = 0

    def do_GET(self) -> None:
        type(self).calls += 1
        time.sleep(0.2)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class Fetch(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("before", "3 days")

        async def fetch() -> Any:
            async with httpx.AsyncClient() as client:
                return (await client.get(event.payload["url"])).json()

        # A 1-second timeout: any skip while the call is in flight would fail the attempt.
        body = await step.do("fetch", {"timeout": "1 second", "retries": {"limit": 2, "delay": 10}}, fetch)
        await step.sleep("after", "3 days")
        return body


async def test_a_step_doing_real_io_succeeds_on_its_first_attempt(db_url: str, slow_server: str) -> None:
    clock = TimeSkippingClock()
    async with TestEngine(db_url, clock=clock) as engine:
        wf = engine.register(Fetch, name="fetch")
        inst = await wf.create(params={"url": slow_server})
        status = await wait_for_status(inst, "complete", timeout=30)
        steps = {s.name: s for s in await inst.history()}
    assert status.output == {"ok": True}
    assert len(steps["fetch"].attempts) == 1 and steps["fetch"].attempts[0].success
    attempt = steps["fetch"].attempts[0]
    assert attempt.end is not None and attempt.end - attempt.start >= 0.2  # the call's real time, not skipped
    assert clock.elapsed >= 6 * DAY


class Hang(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        async def hang() -> None:
            await asyncio.sleep(30)

        await step.do("hang", {"timeout": 300, "retries": {"limit": 0}}, hang)


async def test_a_steps_own_timeout_runs_in_real_time(db_url: str) -> None:
    clock = TimeSkippingClock()
    async with TestEngine(db_url, clock=clock) as engine:
        wf = engine.register(Hang, name="hang")
        status = await wait_for_status(await wf.create(), "errored", timeout=30)
    assert status.error is not None and "Execution timed out after 300ms" in status.error.message
    assert clock.jumps == 0  # nothing was skipped while the attempt ran


class Approval(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        try:
            ev = await step.wait_for_event("approval", "approval", timeout="1 hour")
        except WorkflowTimeoutError:
            return "timed out"
        return ev.payload


async def test_skips_go_to_the_wakeup_an_instance_waits_for_and_nowhere_else(db_url: str) -> None:
    clock = TimeSkippingClock()
    async with TestEngine(db_url, clock=clock) as engine:
        await asyncio.sleep(0.05)
        assert clock.jumps == 0  # an idle engine with nothing waiting never skips (no poll, purge or lease)
        wf = engine.register(Approval, name="approval")
        start = clock.now()
        status = await wait_for_status(await wf.create(), "complete", timeout=30)
    assert status.output == "timed out"
    assert 3600 <= clock.now() - start < 3600 + 30  # to the deadline, real seconds at most past it


async def test_an_event_sent_while_waiting_arrives_before_the_deadline(db_url: str) -> None:
    clock = TimeSkippingClock()
    async with TestEngine(db_url, clock=clock) as engine:
        wf = engine.register(Approval, name="approval")
        inst = await wf.create()
        await wait_for_event_wait(inst, "approval")
        await inst.send_event(type="approval", payload={"ok": True})
        assert (await wait_for_status(inst, "complete")).output == {"ok": True}


class Flaky(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def flaky(ctx: Any) -> int:
            if ctx.attempt < 3:
                raise ConnectionError(f"attempt {ctx.attempt}")
            return int(ctx.attempt)

        delay = event.payload["delay"]
        return await step.do("flaky", {"retries": {"limit": 5, "delay": delay, "backoff": "constant"}}, flaky)


@pytest.mark.parametrize(("delay", "seconds"), [(500, 0.5), ("1 hour", 3600.0)])
async def test_retry_delays_are_skipped_in_process_and_hibernating(db_url: str, delay: object, seconds: float) -> None:
    clock = TimeSkippingClock()
    async with TestEngine(db_url, clock=clock) as engine:
        wf = engine.register(Flaky, name="flaky")
        inst = await wf.create(params={"delay": delay})
        assert (await wait_for_status(inst, "complete", timeout=30)).output == 3
    assert clock.elapsed >= 2 * seconds
    assert clock.jumps >= 2


class Quick(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("quick", lambda: "done")


class Month(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("a month", "30 days")
        return "slept"


async def test_skipping_past_the_retention_keeps_the_tests_instances(db_url: str) -> None:
    clock = TimeSkippingClock()
    async with TestEngine(db_url, clock=clock) as engine:
        quick = engine.register(Quick, name="quick")
        month = engine.register(Month, name="month")
        done = await quick.create(retention={"success_retention": "1 second"})
        await wait_for_status(done, "complete")
        assert (await wait_for_status(await month.create(), "complete", timeout=30)).output == "slept"
        assert (await done.status()).status == "complete"  # 30 days on, well past its retention
    assert clock.elapsed >= 30 * DAY


class ManyRetries(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        started_runs.append(event.instance_id)

        def flaky(ctx: Any) -> int:
            if ctx.attempt < 60:
                raise ConnectionError("not yet")
            return int(ctx.attempt)

        return await step.do("flaky", {"retries": {"limit": 100, "delay": 900, "backoff": "constant"}}, flaky)


started_runs: list[str] = []


async def test_skips_past_a_short_lease_never_let_the_worker_take_its_own_run_over(db_url: str) -> None:
    started_runs.clear()
    async with TestEngine(db_url, lease_seconds=30) as engine:  # a project's lease_seconds, say
        inst = await engine.register(ManyRetries, name="many").create()
        assert (await wait_for_status(inst, "complete", timeout=60)).output == 60
        assert engine.worker is not None and "aborted" not in engine.worker.outcomes
        assert isinstance(engine.clock, TimeSkippingClock) and engine.clock.elapsed >= 59 * 0.9
    assert started_runs == [inst.id]  # one run: in-process retry waits, skipped, the lease held throughout
