"""A worker process for the fault tests: runs the ``chain`` workflow on a database until killed.

Usage: ``python -m tests.faults.worker DATABASE_URL LOG_PATH [--step-seconds S] [--concurrency N]
[--lease-seconds S] [--gate PATH --gate-step NAME]``. Every step execution appends
``<start time> <pid> <instance id> <step name>`` to LOG_PATH before doing its work, so a test can count
executions and tell which process ran what. A step's result names the process that produced it. With
``--gate``, the step ``--gate-step`` (default ``s0``) waits after logging until the file PATH exists: a test
holds every claimed instance inside that step for as long as it wants, so what each worker holds is decided
by its concurrency, not by timing.

``STEPSTONE_FAULT_SLOW_WRITE=<step>:<seconds>`` slows one write on purpose: once the result of that step is
committed, the worker appends ``<pid> committed <step>`` to ``LOG_PATH.marks`` and holds the write's reply for
that long, so a test can freeze the process (SIGSTOP) while it waits for a commit that already happened.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

from stepstone import Engine, WorkflowEntrypoint

STEPS = 6
# An attempt cut short by a crash counts as a failed attempt; retry those quickly here.
RETRY_FAST = {"retries": {"limit": 50, "delay": 50, "backoff": "constant"}}
LOG_PATH = ""
STEP_SECONDS = 0.15
GATE: Path | None = None
GATE_STEP = "s0"


def log_execution(instance_id: str, name: str) -> None:
    """Append one line per execution; O_APPEND keeps concurrent writers' lines whole."""
    fd = os.open(LOG_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{time.time():.6f} {os.getpid()} {instance_id} {name}\n".encode())
    finally:
        os.close(fd)


class Chain(WorkflowEntrypoint):
    """STEPS sequential steps with a short sleep in the middle; each result is ``[n*100+i, pid]``."""

    async def run(self, event: Any, step: Any) -> Any:
        n = int(event.payload["n"])
        results = []
        for i in range(STEPS):

            async def work(i: int = i) -> list[int]:
                log_execution(event.instance_id, f"s{i}")
                while GATE is not None and f"s{i}" == GATE_STEP and not GATE.exists():
                    await asyncio.sleep(0.02)
                await asyncio.sleep(STEP_SECONDS * random.uniform(0.5, 1.5))
                return [n * 100 + i, os.getpid()]

            results.append(await step.do(f"s{i}", RETRY_FAST, work))
            if i == STEPS // 2:
                await step.sleep("nap", 300)
        return {"n": n, "results": results}


class Blocky(WorkflowEntrypoint):
    """One async step that blocks the event loop (``time.sleep``) for longer than the lease on its first two
    attempts, then succeeds; every attempt is logged as ``blocky-<attempt>``."""

    async def run(self, event: Any, step: Any) -> Any:
        async def blocky(ctx: Any) -> str:
            log_execution(event.instance_id, f"blocky-{ctx.attempt}")
            if ctx.attempt < 3:
                time.sleep(3.0)  # the worker's lease is 2 s
            return f"ok on attempt {ctx.attempt}"

        return await step.do("blocky", {"retries": {"limit": 5, "delay": 0}}, blocky)


def expected_values(n: int) -> list[int]:
    """The value part of each step result in an uninterrupted run."""
    return [n * 100 + i for i in range(STEPS)]


def slow_write(storage: Any, spec: str) -> None:
    """Hold the reply of the committed result write of one step (see the module docstring)."""
    name, _, seconds = spec.partition(":")
    put_step = storage.put_step

    def slowed(lease: Any, step: Any, *, durable: bool, **kwargs: Any) -> Any:
        done = put_step(lease, step, durable=durable, **kwargs)
        if step.name != name or step.status != "success":
            return done

        async def held() -> None:
            await done
            with open(LOG_PATH + ".marks", "a") as marks:
                marks.write(f"{os.getpid()} committed {name}\n")
            await asyncio.sleep(float(seconds))

        return held()

    storage.put_step = slowed


async def main(url: str, concurrency: int, lease_seconds: float) -> None:
    engine = Engine(url, concurrency=concurrency, lease_seconds=lease_seconds, poll_interval=0.25)
    if os.environ.get("STEPSTONE_FAULT_SLOW_WRITE"):
        slow_write(engine.storage, os.environ["STEPSTONE_FAULT_SLOW_WRITE"])
    async with engine:
        engine.register(Chain, name="chain")
        engine.register(Blocky, name="blocky")
        await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("log")
    parser.add_argument("--step-seconds", type=float, default=STEP_SECONDS)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--lease-seconds", type=float, default=2.0)
    parser.add_argument("--gate", type=Path)
    parser.add_argument("--gate-step", default=GATE_STEP)
    args = parser.parse_args()
    LOG_PATH, STEP_SECONDS, GATE, GATE_STEP = args.log, args.step_seconds, args.gate, args.gate_step
    asyncio.run(main(args.url, args.concurrency, args.lease_seconds))
