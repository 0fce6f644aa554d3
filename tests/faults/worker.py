"""A worker process for the fault tests: runs the ``chain`` workflow on a database until killed.

Usage: ``python -m tests.faults.worker DATABASE_URL LOG_PATH [STEP_SECONDS]``. Every step execution appends
``<start time> <pid> <instance id> <step name>`` to LOG_PATH before doing its work, so a test can count
executions and tell which process ran what. A step's result names the process that produced it.

``STEPSTONE_FAULT_SLOW_WRITE=<step>:<seconds>`` slows one write on purpose: once the result of that step is
committed, the worker appends ``<pid> committed <step>`` to ``LOG_PATH.marks`` and holds the write's reply for
that long, so a test can freeze the process (SIGSTOP) while it waits for a commit that already happened.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from typing import Any

from stepstone import Engine, WorkflowEntrypoint

STEPS = 6
# An attempt cut short by a crash counts as a failed attempt; retry those quickly here.
RETRY_FAST = {"retries": {"limit": 50, "delay": 50, "backoff": "constant"}}
LOG_PATH = ""
STEP_SECONDS = 0.15


def log_execution(instance_id: str, name: str) -> None:
    """Append one line per execution; O_APPEND keeps concurrent writers' lines whole."""
    fd = os.open(LOG_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f} {os.getpid()} {instance_id} {name}\n".encode())
    finally:
        os.close(fd)


class Chain(WorkflowEntrypoint):
    """STEPS sequential steps with a hibernating sleep in the middle; each result is ``[n*100+i, pid]``."""

    async def run(self, event: Any, step: Any) -> Any:
        n = int(event.payload["n"])
        results = []
        for i in range(STEPS):

            async def work(i: int = i) -> list[int]:
                log_execution(event.instance_id, f"s{i}")
                await asyncio.sleep(STEP_SECONDS * random.uniform(0.5, 1.5))
                return [n * 100 + i, os.getpid()]

            results.append(await step.do(f"s{i}", RETRY_FAST, work))
            if i == STEPS // 2:
                await step.sleep("nap", 300)
        return {"n": n, "results": results}


def expected_values(n: int) -> list[int]:
    """The value part of each step result in an uninterrupted run."""
    return [n * 100 + i for i in range(STEPS)]


def slow_write(storage: Any, spec: str) -> None:
    """Hold the reply of the committed result write of one step (see the module docstring)."""
    name, _, seconds = spec.partition(":")
    put_step = storage.put_step

    def slowed(lease: Any, step: Any, *, durable: bool) -> Any:
        done = put_step(lease, step, durable=durable)
        if step.name != name or step.status != "success":
            return done

        async def held() -> None:
            await done
            with open(LOG_PATH + ".marks", "a") as marks:
                marks.write(f"{os.getpid()} committed {name}\n")
            await asyncio.sleep(float(seconds))

        return held()

    storage.put_step = slowed


async def main(url: str) -> None:
    engine = Engine(url, concurrency=10, lease_seconds=2.0, poll_interval=0.25)
    if os.environ.get("STEPSTONE_FAULT_SLOW_WRITE"):
        slow_write(engine.storage, os.environ["STEPSTONE_FAULT_SLOW_WRITE"])
    async with engine:
        engine.register(Chain, name="chain")
        await asyncio.Event().wait()


if __name__ == "__main__":
    LOG_PATH = sys.argv[2]
    if len(sys.argv) > 3:
        STEP_SECONDS = float(sys.argv[3])
    asyncio.run(main(sys.argv[1]))
