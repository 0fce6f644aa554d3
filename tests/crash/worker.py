"""A worker process for the crash tests: runs the Crashy workflow on the given database until killed.

Usage: python -m tests.crash.worker DATABASE_URL LOG_PATH
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from typing import Any

from stepstone import Engine, WorkflowEntrypoint

LOG_PATH = ""
# An attempt cut short by a crash counts as a failed attempt (Cloudflare's rule); retry those quickly here.
RETRY_FAST = {"retries": {"limit": 20, "delay": 50, "backoff": "constant"}}


def log_execution(instance_id: str, key: str) -> None:
    """Append one line per step execution, before the step's work, with the time it started."""
    fd = os.open(LOG_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f} {os.getpid()} {instance_id} {key}\n".encode())
    finally:
        os.close(fd)


class Crashy(WorkflowEntrypoint):
    """Sequential steps, a gather, a hibernating sleep, more steps: output is a deterministic function of n."""

    async def run(self, event: Any, step: Any) -> Any:
        n = int(event.payload["n"])
        total = 0
        for i in range(6):

            async def work(i: int = i) -> int:
                log_execution(event.instance_id, f"seq-{i}")
                await asyncio.sleep(random.uniform(0.03, 0.12))
                return n * 100 + i

            total += await step.do(f"seq {i}", RETRY_FAST, work)

        async def par(j: int) -> int:
            log_execution(event.instance_id, f"par-{j}")
            await asyncio.sleep(random.uniform(0.03, 0.12))
            return j * j

        total += sum(await asyncio.gather(*(step.do(f"par {j}", RETRY_FAST, lambda j=j: par(j)) for j in range(4))))
        await step.sleep("nap", 400)
        for i in range(4):

            def sync_work(i: int = i) -> int:
                log_execution(event.instance_id, f"tail-{i}")
                time.sleep(random.uniform(0.02, 0.06))
                return i

            total += await step.do(f"tail {i}", RETRY_FAST, sync_work)
        return {"n": n, "total": total}


def expected_total(n: int) -> int:
    """What an uninterrupted run returns."""
    return sum(n * 100 + i for i in range(6)) + sum(j * j for j in range(4)) + sum(range(4))


async def main(url: str) -> None:
    async with Engine(url, concurrency=50, lease_seconds=3.0, poll_interval=0.2) as engine:
        engine.register(Crashy, name="crashy")
        await asyncio.Event().wait()


if __name__ == "__main__":
    LOG_PATH = sys.argv[2]
    asyncio.run(main(sys.argv[1]))
