"""A worker that lost its lease starts no further step: a freeze (SIGSTOP) lands inside a committed write."""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from stepstone import Engine
from stepstone.testing import wait_for_status
from tests.faults.conftest import Workers, check_all_complete, create_chain, read_log, wait_until
from tests.faults.worker import STEPS, Chain

pytestmark = pytest.mark.slow


async def test_worker_frozen_inside_a_committed_write_starts_no_further_step(workers: Workers, tmp_path: Path) -> None:
    # Worker A commits s1's result, then (on purpose) holds the write's reply for 1.5 s: we freeze it there.
    marks = Path(f"{workers.log}.marks")
    a_log = tmp_path / "a.stderr"
    a = workers.start(step_seconds=0.05, env={"STEPSTONE_FAULT_SLOW_WRITE": "s1:1.5"}, stderr=a_log)
    await create_chain(workers.url, 1)
    await wait_until(lambda: marks.exists() and f"{a.pid} committed s1" in marks.read_text())
    os.kill(a.pid, signal.SIGSTOP)
    frozen_at = max(e[0] for e in read_log(workers.log))
    # B takes the instance over once A's lease (2 s) expires, replays s0 and s1 and runs the rest.
    workers.start(step_seconds=0.05)
    async with Engine(workers.url, worker=False) as client:
        inst = await client.register(Chain, name="chain").get("i0")
        await wait_for_status(inst, "complete", timeout=60)
    # A wakes, receives the commit it was waiting for, and must not start s2 (B ran it long ago).
    os.kill(a.pid, signal.SIGCONT)

    def late() -> list[tuple[float, int, str, str]]:
        return [e for e in read_log(workers.log) if e[1] == a.pid and e[0] > frozen_at]

    def abandoned() -> bool:
        return "abandoning the run before step 's2-1'" in a_log.read_text(errors="replace")

    await wait_until(lambda: abandoned() or late())
    assert not late(), f"the worker whose lease expired started steps after it woke: {late()}"
    assert a.poll() is None  # A lives on and keeps working
    await check_all_complete(workers.url, workers.log, 1)
    runs = Counter((e[2], e[3]) for e in read_log(workers.log))
    assert runs == Counter({("i0", f"s{i}"): 1 for i in range(STEPS)})  # every body ran exactly once
