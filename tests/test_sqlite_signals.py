"""Processes sharing one SQLite file signal each other: a create, an event and a terminate reach a worker that
polls only every 30 s within milliseconds, through the ``signals`` table."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from stepstone import Engine, WorkflowEntrypoint
from stepstone.testing import wait_for_status


class Flow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a", lambda: 1)
        ev = await step.wait_for_event("approval", "approval", timeout="1 minute")
        return {"a": a, "ok": ev.payload["ok"]}


class Slow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("forever", lambda: asyncio.sleep(3600))


async def test_signals_reach_a_worker_on_the_same_file_at_once(db_url: str) -> None:
    async with Engine(db_url, poll_interval=30) as worker, Engine(db_url, worker=False) as client:
        worker.register(Flow, name="flow")
        worker.register(Slow, name="slow")
        await asyncio.sleep(0.2)  # the worker's first, empty claim; from now on it only polls every 30 s
        wf = client.register(Flow, name="flow")
        started = time.monotonic()
        inst = await wf.create(id="x")
        await wait_for_status(inst, "waiting", timeout=2)
        sent = time.monotonic()
        await inst.send_event(type="approval", payload={"ok": True})
        assert (await wait_for_status(inst, "complete", timeout=2)).output == {"a": 1, "ok": True}
        assert time.monotonic() - sent < 0.5
        assert time.monotonic() - started < 2

        slow = await client.register(Slow, name="slow").create(id="s")
        await wait_for_status(slow, "running", timeout=2)
        assert worker.worker is not None
        await asyncio.sleep(0.1)
        assert worker.worker.busy == 1
        terminated = time.monotonic()
        await slow.terminate()
        while worker.worker.busy and time.monotonic() - terminated < 1.5:
            await asyncio.sleep(0.01)
        assert worker.worker.busy == 0
        assert time.monotonic() - terminated < 1.0  # the signal, not the 2 s lease renewal, stopped it
