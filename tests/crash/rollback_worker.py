"""A worker process for the rollback crash tests: runs Saga until killed.

Usage: python -m tests.crash.rollback_worker DATABASE_URL LOG_PATH [GATE_DIR]

Every forward step and every undo handler appends a line to LOG_PATH before its work (``<time> <pid> <instance>
<key>``, key ``do-sN`` or ``undo-sN``). With GATE_DIR, the undo handler of step ``s2`` waits until the file
``GATE_DIR/<instance id>`` exists, so a test can kill the worker in the middle of a rollback.
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
STEPS = 5


def log_execution(instance_id: str, key: str) -> None:
    """One line per execution, before its work, with the time it started."""
    fd = os.open(LOG_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f} {os.getpid()} {instance_id} {key}\n".encode())
    finally:
        os.close(fd)


class Saga(WorkflowEntrypoint):
    """Five steps with undo handlers; then it fails and rolls back (``fail``), or waits for ``go`` (a test
    terminates it with rollback)."""

    async def run(self, event: Any, step: Any) -> Any:
        me = event.instance_id
        try:
            for n in range(STEPS):
                await _declare(step, me, n)()
            if event.payload.get("fail"):
                await step.do("fail", {"retries": {"limit": 0, "delay": 1}}, _fail)
        except ValueError as exc:
            await step.rollback_all(exc)
            raise
        await step.wait_for_event("go", "go", timeout="1 hour")
        return "done"


def _declare(step: Any, me: str, n: int) -> Any:
    @step.with_rollback(f"s{n}", RETRY_FAST)
    async def forward() -> str:
        log_execution(me, f"do-s{n}")
        await asyncio.sleep(random.uniform(0.01, 0.04))
        return f"v{n}"

    @forward.undo
    async def undo(error: Any, output: str) -> str:
        log_execution(me, f"undo-s{n}")
        if GATE_DIR and n == 2:
            while not (Path(GATE_DIR) / me).exists():
                await asyncio.sleep(0.02)
        await asyncio.sleep(random.uniform(0.02, 0.08))
        return f"undid {output}"

    return forward


def _fail() -> None:
    raise ValueError("out of stock")


async def main(url: str) -> None:
    async with Engine(url, concurrency=50, lease_seconds=3.0, poll_interval=0.2) as engine:
        engine.register(Saga, name="saga")
        await asyncio.Event().wait()


if __name__ == "__main__":
    LOG_PATH = sys.argv[2]
    GATE_DIR = sys.argv[3] if len(sys.argv) > 3 else ""
    asyncio.run(main(sys.argv[1]))
