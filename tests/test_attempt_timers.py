"""The shared timers of attempts: one deadline heap per loop for async step timeouts, one start-mark timer per run.

A timer per attempt cost a context copy, a heap push and a cancel each (the hot path of every step); these tests
hold what the shared ones promise instead: a due timeout still fires among thousands of far ones, the heap of
finished attempts is dropped rather than kept for ten minutes, and a slow attempt is still recorded as started
while it runs (so a crash during it counts against its retry budget).
"""

from __future__ import annotations

import asyncio
from typing import Any

from stepstone import Engine, InstanceError, WorkflowEntrypoint
from stepstone.step_call import Deadlines, _deadlines
from stepstone.testing import wait_for_status

NO_RETRY = {"retries": {"limit": 0, "delay": 0}}
GATE: dict[str, asyncio.Event] = {}


async def noop() -> None:
    return None


class Many(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> int:
        for i in range(int(event.payload["n"])):
            await step.do(f"s{i}", noop)
        return int(event.payload["n"])


class Stuck(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def forever() -> None:
            await asyncio.Event().wait()

        return await step.do("stuck", {**NO_RETRY, "timeout": 200}, forever)


class Slow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def slow() -> str:
            await GATE[event.instance_id].wait()
            return "done"

        return await step.do("slow", slow)


async def test_a_due_timeout_fires_among_many_far_ones(db_url: str) -> None:
    async with Engine(db_url, concurrency=50) as engine:
        many = engine.register(Many, name="many")
        stuck = engine.register(Stuck, name="stuck")
        busy = [await many.create(id=f"m{i}", params={"n": 200}) for i in range(20)]
        inst = await stuck.create(id="stuck")
        status = await wait_for_status(inst, "errored", timeout=30)
        assert status.error == InstanceError("WorkflowTimeoutError", "Execution timed out after 200ms")
        for b in busy:
            assert (await wait_for_status(b, "complete", timeout=60)).output == 200


async def test_finished_attempts_do_not_stay_in_the_deadline_heap(db_url: str) -> None:
    async with Engine(db_url, concurrency=20) as engine:
        many = engine.register(Many, name="many")
        insts = [await many.create(id=f"m{i}", params={"n": 300}) for i in range(10)]
        for inst in insts:
            await wait_for_status(inst, "complete", timeout=60)
        deadlines = _deadlines(asyncio.get_running_loop())
        # 3,000 attempts ran, each with a ten-minute deadline; what is left is bounded by the live ones.
        assert len(deadlines._heap) <= 2 * deadlines._live + 1024
        assert deadlines._live == 0


async def test_deadlines_expire_only_what_is_due() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop)
    fired: list[str] = []

    async def attempt(name: str, after: float, takes: float) -> None:
        timeout = asyncio.timeout(None)
        try:
            async with timeout:
                entry = deadlines.add(loop.time() + after, timeout)
                try:
                    await asyncio.sleep(takes)
                finally:
                    deadlines.done(entry)
        except TimeoutError:
            fired.append(name)

    await asyncio.gather(
        attempt("late", 0.05, 5), attempt("quick", 0.05, 0), attempt("far", 600, 0.1), attempt("later", 0.15, 5)
    )
    assert fired == ["late", "later"]
    assert deadlines._live == 0


async def test_a_slow_attempt_is_recorded_as_started_while_it_runs(db_url: str) -> None:
    GATE["slow"] = asyncio.Event()
    async with Engine(db_url) as engine:
        wf = engine.register(Slow, name="slow")
        inst = await wf.create(id="slow")
        pk = await _pk(engine, "slow")
        for _ in range(500):
            rows, _events = await engine.storage.load_history(pk)
            if any(s.attempts for s in rows):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the running attempt was never recorded")
        (rec,) = rows
        assert rec.status == "running" and len(rec.attempts) == 1 and rec.attempts[0].end is None
        GATE["slow"].set()
        assert (await wait_for_status(inst, "complete", timeout=30)).output == "done"


async def _pk(engine: Engine, instance_id: str) -> int:
    record = await engine.storage.get_instance("local", "slow", instance_id)
    assert record is not None
    return record.pk
