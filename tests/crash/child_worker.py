"""A worker process for the child-workflow crash tests: runs Family (the parent) and Kid (the child) until killed.

Usage: python -m tests.crash.child_worker DATABASE_URL LOG_PATH [GATE_DIR]

Every step execution appends a line to LOG_PATH before its work. With GATE_DIR, a kid's ``work`` step waits
until the file ``GATE_DIR/<kid id>`` exists, so a test can kill the worker while that child runs.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

from stepstone import Engine, WorkflowEntrypoint

LOG_PATH = ""
GATE_DIR = ""
RETRY_FAST = {"retries": {"limit": 20, "delay": 50, "backoff": "constant"}}


def log_execution(instance_id: str, key: str) -> None:
    """One line per step execution, before the step's work, with the time it started."""
    fd = os.open(LOG_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f} {os.getpid()} {instance_id} {key}\n".encode())
    finally:
        os.close(fd)


class Kid(WorkflowEntrypoint):
    """Two steps; returns a deterministic function of its params."""

    async def run(self, event: Any, step: Any) -> Any:
        me = event.instance_id

        async def work() -> int:
            log_execution(me, "work")
            if GATE_DIR:
                while not (Path(GATE_DIR) / me).exists():
                    await asyncio.sleep(0.02)
            await asyncio.sleep(random.uniform(0.02, 0.08))
            return int(event.payload["n"]) * 10

        value = await step.do("work", RETRY_FAST, work)

        def finish() -> int:
            log_execution(me, "finish")
            return value + 1

        return {"value": await step.do("finish", RETRY_FAST, finish)}


class Family(WorkflowEntrypoint):
    """A step, two children awaited one after the other, a step using their outputs."""

    async def run(self, event: Any, step: Any) -> Any:
        me = event.instance_id
        n = int(event.payload["n"])

        def before() -> int:
            log_execution(me, "before")
            return n

        await step.do("before", RETRY_FAST, before)
        first = await step.run_workflow("kid", {"n": n})
        second = await step.run_workflow("kid", {"n": n + 1})

        def after() -> int:
            log_execution(me, "after")
            return int(first["value"]) + int(second["value"])

        return {"n": n, "sum": await step.do("after", RETRY_FAST, after)}


def expected(n: int) -> dict[str, int]:
    """What an uninterrupted run of Family returns."""
    return {"n": n, "sum": (n * 10 + 1) + ((n + 1) * 10 + 1)}


async def main(url: str) -> None:
    async with Engine(url, concurrency=50, lease_seconds=3.0, poll_interval=0.2) as engine:
        engine.register(Kid, name="kid")
        engine.register(Family, name="family")
        await asyncio.Event().wait()


if __name__ == "__main__":
    LOG_PATH = sys.argv[2]
    GATE_DIR = sys.argv[3] if len(sys.argv) > 3 else ""
    asyncio.run(main(sys.argv[1]))
