"""Several worker processes on one database (SQLite file or PostgreSQL): kills, stops and claim races.

These tests assert only what they control: how many instances a worker may hold (its concurrency), when a
step may finish (a gate file the step waits for), and which worker is killed while it holds what. They never
assert how the claims happened to be spread over the workers.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections import Counter
from pathlib import Path

import pytest

from stepstone import Engine
from stepstone.testing import wait_for_status
from tests.faults.conftest import (
    Workers,
    check_all_complete,
    create_chain,
    held_instances,
    read_log,
    started,
    wait_until,
)
from tests.faults.worker import STEPS, Chain

pytestmark = pytest.mark.slow


async def test_sigkill_one_of_three_repeatedly(workers: Workers, tmp_path: Path) -> None:
    # Three workers of concurrency 4 share 30 instances whose last step waits for a gate the test opens after
    # the kills: the run cannot end during them, and every live worker fills its 4 slots, so each victim
    # (chosen at random) is killed while it holds instances, whatever the timing.
    count, kills, gate = 30, 8, tmp_path / "gate"
    options = {"concurrency": 4, "lease_seconds": 5.0, "gate": gate, "gate_step": f"s{STEPS - 1}"}
    await create_chain(workers.url, count)
    for _ in range(3):
        workers.start(**options)  # type: ignore[arg-type]
    rng = random.Random(5)
    held: dict[int, set[str]] = {}
    async with Engine(workers.url, worker=False) as client:
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.4, 0.9))
            victim = rng.choice(workers.alive)
            for _ in range(600):
                holding = (await held_instances(client, count)).get(victim.pid)
                if holding:
                    break
                await asyncio.sleep(0.05)
            assert holding, f"worker {victim.pid} never held an instance although 30 wait for 12 slots"
            workers.kill(victim)
            held[victim.pid] = holding
            workers.start(**options)  # type: ignore[arg-type]
    gate.touch()
    outputs = await check_all_complete(workers.url, workers.log, count)
    assert len(held) == kills and all(held.values())
    # every instance a killed worker held was finished by other processes, from its recorded history
    for pid, ids in held.items():
        for inst in ids:
            assert outputs[inst]["n"] == int(inst[1:])  # type: ignore[index]
            last_step = outputs[inst]["results"][-1]  # type: ignore[index]
            assert last_step[1] != pid  # the last step waited for the gate, opened after every kill
    executions = read_log(workers.log)
    assert len(executions) >= count * STEPS
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
        before = (await wait_for_status(inst, "complete", timeout=60)).output
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


async def test_workers_racing_to_claim_take_each_instance_once(workers: Workers, tmp_path: Path) -> None:
    # 40 instances, three workers of concurrency 5 whose first step waits for a gate: together they hold 15
    # instances in that step, 5 each (their concurrency), before the test opens the gate and lets them race
    # for the other 25.
    count, gate = 40, tmp_path / "gate"
    await create_chain(workers.url, count)
    for _ in range(3):
        workers.start(step_seconds=0.02, concurrency=5, gate=gate, gate_step="s0")
    await wait_until(lambda: len(started(workers.log, "s0")) >= 15, timeout=60)
    await asyncio.sleep(0.5)  # no worker takes a sixth instance while its five wait
    first = started(workers.log, "s0")
    assert len(first) == 15
    assert sorted(Counter(first.values()).values()) == [5, 5, 5]
    gate.touch()
    await check_all_complete(workers.url, workers.log, count)
    runs = Counter((e[2], e[3]) for e in read_log(workers.log))
    assert set(runs.values()) == {1}, [k for k, n in runs.items() if n > 1][:5]
