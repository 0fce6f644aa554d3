"""Throughput with one and with two worker processes on one PostgreSQL database (issue 6: "more with two").

    .venv/bin/python -m bench.workers [--instances 400] [--steps 10]

For N in (1, 2): a fresh database; N worker processes (``python -m bench.workers worker URL``) each with an
in-process engine; a client engine (no worker) creates ``instances`` instances of ``steps`` no-op steps with
``create_batch``; the time from the first create to the last completion gives steps/s. Prints both and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
import uuid
from typing import Any

from bench.common import PG_BASE
from stepstone import Engine, WorkflowEntrypoint


async def noop() -> None:
    return None


class Steps(WorkflowEntrypoint):
    """``n`` sequential no-op steps."""

    async def run(self, event: Any, step: Any) -> int:
        n = int(event.payload["n"])
        for i in range(n):
            await step.do(f"s{i}", noop)
        return n


async def worker(url: str) -> None:
    async with Engine(url, concurrency=500, poll_interval=0.05) as engine:
        engine.register(Steps, name="steps")
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()


def _fresh_db() -> str:
    import psycopg

    name = f"bench_workers_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(f"{PG_BASE}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_BASE}/{name}"


def _drop_db(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(f"{PG_BASE}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def measure(workers: int, instances: int, steps: int) -> float:
    url = _fresh_db()
    procs = []
    try:
        async with Engine(url, worker=False) as client:
            wf = client.register(Steps, name="steps")
            for _ in range(workers):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.workers", "worker", url, stdout=asyncio.subprocess.PIPE
                )
                assert proc.stdout is not None
                await proc.stdout.readline()
                procs.append(proc)
            rows = [{"id": f"i{i}", "params": {"n": steps}} for i in range(instances)]
            t0 = time.perf_counter()
            await asyncio.gather(*(wf.create_batch({"instances": rows[i : i + 100]}) for i in range(0, instances, 100)))
            while (await client.storage.count_by_status("local", "steps")).get("complete", 0) < instances:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        _drop_db(url)
    return instances * steps / elapsed


async def main(instances: int, steps: int) -> None:
    one = await measure(1, instances, steps)
    two = await measure(2, instances, steps)
    print(f"{instances} instances x {steps} steps, PostgreSQL, worker processes on this machine:")
    print(f"  1 worker : {one:,.0f} steps/s")
    print(f"  2 workers: {two:,.0f} steps/s ({two / one:.2f} x)")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        asyncio.run(worker(sys.argv[2]))
    else:
        parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--instances", type=int, default=400)
        parser.add_argument("--steps", type=int, default=10)
        args = parser.parse_args()
        asyncio.run(main(args.instances, args.steps))
