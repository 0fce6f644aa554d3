"""Replay after a hibernation: an instance records N no-op steps, sleeps, and on waking replays them all.

    PYTHONPATH=$PWD .venv/bin/python -m bench.replay --steps 9990 --runs 5 [--postgres URL]

Prints, per run, wake -> the next new step's start (ms, the worker's own wake-up included), then the median, and
the in-process pieces of one replay (min of 10: ``load_history``, the run state, ``run()`` serving every step).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from typing import Any

from stepstone import Engine, WorkflowEntrypoint
from stepstone.clock import SystemClock
from stepstone.models import Lease
from stepstone.run_state import RunState
from stepstone.step import WorkflowStep

STAMP: dict[str, float] = {}


async def _noop() -> None:
    return None


async def _stamp() -> None:
    STAMP["after"] = time.time()


class Long(WorkflowEntrypoint):
    """``k`` steps, a sleep that hibernates the instance, one more step."""

    async def run(self, event: Any, step: Any) -> Any:
        for i in range(int(event.payload["k"])):
            await step.do(f"s{i}", _noop)
        await step.sleep("nap", 1500)
        await step.do("after", _stamp)
        return 1


class Replay(WorkflowEntrypoint):
    """The recorded steps of :class:`Long` only, to time ``run()`` serving them."""

    async def run(self, event: Any, step: Any) -> Any:
        for i in range(int(event)):
            await step.do(f"s{i}", _noop)
        return 1


def _engine(url: str, **kw: Any) -> Engine:
    return Engine(url, synchronous="OFF", **kw) if url.startswith("sqlite") else Engine(url, **kw)


async def one_run(url: str, k: int) -> tuple[float, dict[str, float]]:
    """Wake -> next step ms of one instance of ``k`` steps, and the in-process replay pieces (ms)."""
    async with _engine(url) as engine:
        wf = engine.register(Long, name="long")
        inst = await wf.create(id="a", params={"k": k})
        while (await inst.status()).status != "waiting":
            await asyncio.sleep(0.05)
        rec = await engine.storage.get_instance("local", "long", "a")
        assert rec is not None and rec.runnable_at is not None
        while engine.worker is not None and engine.worker.outcomes.get("complete", 0) < 1:
            await asyncio.sleep(0.01)
        wake_ms = (STAMP["after"] - rec.runnable_at) * 1000
        pieces = {"load_history": 1e9, "run state": 1e9, "run()": 1e9}
        for _ in range(10):
            t0 = time.perf_counter()
            steps, events = await engine.storage.load_history(rec.pk)
            t1 = time.perf_counter()
            state = RunState(
                storage=engine.storage,
                clock=SystemClock(),
                lease=Lease(rec.pk, "bench", 0),
                limits=engine.limits,
                workflow="long",
                instance_id="a",
                history={s.key: s for s in steps},
                events=events,
            )
            t2 = time.perf_counter()
            await Replay(None, None).run(k, WorkflowStep(state))
            t3 = time.perf_counter()
            for name, took in zip(pieces, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                pieces[name] = min(pieces[name], took * 1000)
        return wake_ms, pieces


async def _main(steps: int, runs: int, postgres: str | None) -> None:
    import psycopg

    walls: list[float] = []
    pieces: dict[str, float] = {}
    for _ in range(runs):
        if postgres is None:
            url = f"sqlite:///{tempfile.mkdtemp()}/replay.db"
            wall, got = await one_run(url, steps)
        else:
            name = f"bench_replay_{uuid.uuid4().hex[:8]}"
            async with await psycopg.AsyncConnection.connect(postgres, autocommit=True) as admin:
                await admin.execute(f'CREATE DATABASE "{name}"')
                try:
                    wall, got = await one_run(postgres.rsplit("/", 1)[0] + "/" + name, steps)
                finally:
                    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        walls.append(wall)
        pieces = {n: min(v, pieces.get(n, v)) for n, v in got.items()}
        print(f"wake -> next step {wall:.0f} ms", flush=True)
    shown = ", ".join(f"{n} {v:.1f}" for n, v in pieces.items())
    print(f"{steps} steps: median wake -> next step {statistics.median(walls):.0f} ms; in process (ms): {shown}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=9990)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--postgres", default=None, help="a server URL (a database is made and dropped per run)")
    args = ap.parse_args(argv)
    asyncio.run(_main(args.steps, args.runs, args.postgres))


if __name__ == "__main__":
    main()
