"""A restart's (or a terminate's) abort stops only the runs of the generation before it: a worker that claimed
the instance's new run between the change's commit and the abort must not lose it (the run was cancelled, and
the instance stayed ``running`` until its lease ran out)."""

from __future__ import annotations

import asyncio
from typing import Any

from stepstone import Engine, WorkflowEntrypoint
from stepstone.testing import wait_for_status

GATE: dict[str, asyncio.Event] = {}
STARTED: dict[str, int] = {}


class Gated(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> str:
        async def wait() -> str:
            STARTED[event.instance_id] = STARTED.get(event.instance_id, 0) + 1
            await GATE[event.instance_id].wait()
            return "done"

        return await step.do("wait", wait)


async def _running(engine: Engine, pk: int) -> Any:
    for _ in range(1000):
        entry = engine.worker.running.get(pk) if engine.worker is not None else None
        if entry is not None:
            return entry
        await asyncio.sleep(0.01)
    raise AssertionError("the instance never ran")


async def test_an_abort_for_a_generation_spares_the_run_of_that_generation(db_url: str) -> None:
    GATE["a"] = asyncio.Event()
    async with Engine(db_url) as engine:
        wf = engine.register(Gated, name="gated")
        inst = await wf.create(id="a")
        record = await inst.record()
        execution, task = await _running(engine, record.pk)
        generation = execution.lease.generation
        assert engine.worker is not None
        engine.worker.signal(record.pk, "abort", generation)  # the abort of a change that made this generation
        await asyncio.sleep(0.05)
        assert not task.done()
        engine.worker.signal(record.pk, "abort", generation + 1)  # a newer change: this run is stale
        await asyncio.sleep(0.05)
        assert task.cancelled()


async def test_restart_while_running_completes(db_url: str) -> None:
    GATE["b"] = asyncio.Event()
    async with Engine(db_url) as engine:
        wf = engine.register(Gated, name="gated")
        inst = await wf.create(id="b")
        record = await inst.record()
        await _running(engine, record.pk)
        for _ in range(5):  # each restart's abort stops the run before it, never the one it started
            await inst.restart()
        GATE["b"].set()
        assert (await wait_for_status(inst, "complete", timeout=30)).output == "done"
