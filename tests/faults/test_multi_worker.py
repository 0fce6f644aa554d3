"""Several worker processes on one database (SQLite file or PostgreSQL): kills, stops and claim races."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter

import pytest

from stepstone import Engine
from tests.faults.conftest import Workers, check_all_complete, create_chain, read_log, wait_until
from tests.faults.worker import STEPS, Chain

pytestmark = pytest.mark.slow


async def test_sigkill_one_of_three_repeatedly(workers: Workers) -> None:
    count = 30
    await create_chain(workers.url, count)
    for _ in range(3):
        workers.start()
    rng = random.Random(5)
    for _ in range(8):
        await asyncio.sleep(rng.uniform(0.4, 0.9))
        workers.kill(rng.choice(workers.alive))
        workers.start()
    outputs = await check_all_complete(workers.url, workers.log, count)
    executions = read_log(workers.log)
    assert len(executions) >= count * STEPS
    by_killed = [e for e in executions if e[1] in workers.killed]
    assert by_killed, "no kill landed in the middle of the run"
    producers = {pid for out in outputs.values() for _, pid in out["results"]}  # type: ignore[index]
    assert len(producers) >= 3  # the work really was spread over several processes (10 instances each)
    # a step ran more than once only if an earlier execution's process was killed
    runs = Counter((e[2], e[3]) for e in executions)
    for key, n in runs.items():
        if n > 1:
            pids = [e[1] for e in executions if (e[2], e[3]) == key]
            assert set(pids[:-1]) <= workers.killed, (key, pids)


async def test_stopped_worker_cannot_write_after_its_lease_is_taken(workers: Workers) -> None:
    stopped = workers.start(step_seconds=1.5)
    await create_chain(workers.url, 1)
    await wait_until(lambda: any(e[1] == stopped.pid for e in read_log(workers.log)))
    os.kill(stopped.pid, signal.SIGSTOP)
    frozen_at = read_log(workers.log)[-1][0]
    workers.start(step_seconds=0.05)
    async with Engine(workers.url, worker=False) as client:
        inst = await client.register(Chain, name="chain").get("i0")
        for _ in range(400):
            if (await inst.status()).status == "complete":
                break
            await asyncio.sleep(0.05)
        before = (await inst.status()).output
        os.kill(stopped.pid, signal.SIGCONT)
        continued_at = read_log(workers.log)[-1][0]
        await asyncio.sleep(3.0)  # the stopped worker's step finishes now; its write must be refused
        assert stopped.poll() is None  # still alive, just fenced
        after = await inst.status()
    outputs = await check_all_complete(workers.url, workers.log, 1)
    assert after.status == "complete" and after.output == before == outputs["i0"]
    pids = [pid for _, pid in outputs["i0"]["results"]]  # type: ignore[index]
    assert stopped.pid not in pids  # nothing the stopped worker produced was recorded
    late = [e for e in read_log(workers.log) if e[1] == stopped.pid and e[0] > frozen_at]
    assert not late, f"the fenced worker started new steps after SIGCONT ({continued_at}): {late}"


async def test_workers_racing_to_claim_take_each_instance_once(workers: Workers) -> None:
    count = 40
    await create_chain(workers.url, count)
    for _ in range(3):
        workers.start(step_seconds=0.02)
    await check_all_complete(workers.url, workers.log, count)
    runs = Counter((e[2], e[3]) for e in read_log(workers.log))
    assert set(runs.values()) == {1}, [k for k, n in runs.items() if n > 1][:5]
    starters = {e[1] for e in read_log(workers.log) if e[3] == "s0"}
    assert len(starters) >= 2
