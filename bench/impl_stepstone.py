"""The seven phases on stepstone (any storage URL the engine accepts)."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import time
from itertools import pairwise
from typing import Any

from bench.common import rss_mb, summary_ms
from stepstone import Engine, WorkflowEntrypoint

CONCURRENCY = 500

# In-process observations, written by the workflows below (run() replays, so guards keep first values).
STAMPS: list[float] = []
SLEEP_AT: dict[str, float] = {}
WOKE: dict[str, float] = {}
ARRIVED: dict[str, asyncio.Future[tuple[float, float]]] = {}


async def noop_async() -> None:
    return None


async def stamp() -> None:
    STAMPS.append(time.perf_counter())


class StepsW(WorkflowEntrypoint):
    """``steps`` sequential no-op steps; ``stamp`` records when each step's body starts."""

    async def run(self, event: Any, step: Any) -> int:
        n = int(event.payload["steps"])
        fn = stamp if event.payload.get("stamp") else noop_async
        for i in range(n):
            await step.do(f"s{i}", fn)
        return n


class SleepW(WorkflowEntrypoint):
    """Sleep ``ms``, then one step that records when it started."""

    async def run(self, event: Any, step: Any) -> None:
        iid = event.instance_id
        SLEEP_AT.setdefault(iid, time.time())

        async def after() -> None:
            WOKE.setdefault(iid, time.time())

        await step.sleep("nap", event.payload["ms"])
        await step.do("after", after)


class EventW(WorkflowEntrypoint):
    """Wait for a ``go`` event; record when ``wait_for_event`` returned."""

    async def run(self, event: Any, step: Any) -> None:
        await step.wait_for_event("w", "go", timeout="1 hour")
        fut = ARRIVED.get(event.instance_id)
        if fut is not None and not fut.done():
            fut.set_result((time.perf_counter(), time.time()))


class HibW(WorkflowEntrypoint):
    """Hibernate in a one-hour sleep."""

    async def run(self, event: Any, step: Any) -> None:
        await step.sleep("hib", "1 hour")


def _engine(url: str, **kw: Any) -> Engine:
    kw.setdefault("concurrency", CONCURRENCY)
    return Engine(url, **kw)


def _stats(engine: Engine) -> dict[str, Any]:
    stats = getattr(engine.storage, "commit_stats", None)
    if callable(stats):
        stats = stats()
    if not isinstance(stats, tuple):
        return {}
    commits, writes = stats
    return {"commits": commits, "writes": writes}


async def _wait_status(engine: Engine, name: str, status: str, n: int, *, every: float, timeout: float) -> float:
    """Poll until ``n`` instances of ``name`` are in ``status``; returns the time it was seen."""
    deadline = time.perf_counter() + timeout
    while True:
        counts = await engine.storage.count_by_status("local", name)
        if counts.get(status, 0) >= n:
            return time.perf_counter()
        if counts.get("errored"):
            raise RuntimeError(f"{counts['errored']} instance(s) of {name} errored: {counts}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"waiting for {n} {status} instances of {name}: {counts}")
        await asyncio.sleep(every)


async def _wait_complete(engine: Engine, name: str, n: int, *, timeout: float, every: float = 0.001) -> float:
    """Wait until ``n`` executions finished ``complete`` in this process's worker; returns when it was seen.

    Reads the worker's in-memory outcome counter (bumped after the instance's final write is durable) every
    millisecond, so waiting costs no database reads on the hot path; the database is checked once at the end.
    """
    worker = engine.worker
    outcomes = getattr(worker, "outcomes", None)
    if not isinstance(outcomes, dict):
        return await _wait_status(engine, name, "complete", n, every=0.005, timeout=timeout)
    deadline = time.perf_counter() + timeout
    while outcomes.get("complete", 0) < n:
        if outcomes.get("errored") or outcomes.get("failed"):
            raise RuntimeError(f"instances failed: {outcomes}")
        if time.perf_counter() > deadline:
            raise TimeoutError(f"waiting for {n} complete instances of {name}: {outcomes}")
        await asyncio.sleep(every)
    seen = time.perf_counter()
    await _wait_status(engine, name, "complete", n, every=0.01, timeout=10)
    return seen


async def _create_many(wf: Any, rows: list[dict[str, Any]], *, batch: int = 100, parallel: int = 10) -> None:
    chunks = [rows[i : i + batch] for i in range(0, len(rows), batch)]
    for i in range(0, len(chunks), parallel):
        await asyncio.gather(*(wf.create_batch({"instances": c}) for c in chunks[i : i + parallel]))


# -- phases ------------------------------------------------------------------------------------------------
async def phase1(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    """Sequential steps of one instance: first on the brand-new database, then after a warm-up instance."""
    n = int(sizes["p1_steps"])
    STAMPS.clear()
    async with _engine(url) as engine:
        wf = engine.register(StepsW, name="p1")
        # Fresh: the first instance of a new database, as every new project and test suite starts.
        t0 = time.perf_counter()
        await wf.create(id="fresh", params={"steps": n, "stamp": True})
        t1 = await _wait_complete(engine, "p1", 1, timeout=sizes["timeout_s"], every=0.05)
        fresh = [b - a for a, b in pairwise(STAMPS)]
        fresh_s = t1 - t0
        # Warm: after a 1,000-step instance, as a running service's database is. The same runs for the peers.
        await wf.create(id="warm-up", params={"steps": int(sizes.get("p1_warmup", n)), "stamp": False})
        await _wait_complete(engine, "p1", 2, timeout=sizes["timeout_s"], every=0.05)
        STAMPS.clear()
        t0 = time.perf_counter()
        await wf.create(id="one", params={"steps": n, "stamp": True})
        # Per-step gaps come from the steps' own stamps; a slow poll keeps the harness off the event loop.
        t1 = await _wait_complete(engine, "p1", 3, timeout=sizes["timeout_s"], every=0.05)
        stats = _stats(engine)
    gaps = [b - a for a, b in pairwise(STAMPS)]
    return {
        "steps": n,
        "per_step": summary_ms(gaps),
        "total_s": t1 - t0,
        "fresh": {"per_step": summary_ms(fresh), "total_s": fresh_s},
        **stats,
    }


async def phase2(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    n, k = int(sizes["p2_instances"]), int(sizes["p2_steps"])
    async with _engine(url) as engine:
        wf = engine.register(StepsW, name="p2")
        rows = [{"id": f"i{i}", "params": {"steps": k}} for i in range(n)]
        t0 = time.perf_counter()
        await _create_many(wf, rows)
        t_created = time.perf_counter()
        t1 = await _wait_complete(engine, "p2", n, timeout=sizes["timeout_s"])
        stats = _stats(engine)
    wall = t1 - t0
    return {
        "instances": n,
        "steps_per_instance": k,
        "wall_s": wall,
        "create_s": t_created - t0,
        "steps_per_s": n * k / wall,
        **stats,
    }


async def phase3(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    singles, batches, per = int(sizes["p3_singles"]), int(sizes["p3_batches"]), int(sizes["p3_batch"])
    async with _engine(url) as engine:
        wf = engine.register(StepsW, name="p3")
        t0 = time.perf_counter()
        await asyncio.gather(*(wf.create(id=f"c{i}", params={"steps": 1}) for i in range(singles)))
        single_s = time.perf_counter() - t0
        await _wait_status(engine, "p3", "complete", singles, every=0.02, timeout=sizes["timeout_s"])
        t0 = time.perf_counter()
        for b in range(batches):
            await wf.create_batch({"instances": [{"id": f"b{b}-{i}", "params": {"steps": 1}} for i in range(per)]})
        batch_s = time.perf_counter() - t0
        await _wait_status(engine, "p3", "complete", singles + batches * per, every=0.02, timeout=sizes["timeout_s"])
        # The same batches from a client-only engine (no worker runs them): the cost of creating alone.
        async with _engine(url, worker=False) as client:
            cwf = client.register(StepsW, name="p3client")
            t0 = time.perf_counter()
            for b in range(batches):
                await cwf.create_batch({"instances": [{"id": f"b{b}-{i}", "params": {"steps": 1}} for i in range(per)]})
            client_batch_s = time.perf_counter() - t0
    return {
        "singles": singles,
        "single_s": single_s,
        "single_per_s": singles / single_s,
        "batched": batches * per,
        "batch_size": per,
        "batch_s": batch_s,
        "batch_per_s": batches * per / batch_s,
        "client_batch_s": client_batch_s,
        "client_batch_per_s": batches * per / client_batch_s,
    }


async def _timers(url: str, n: int, sleep_s: float, *, paced: bool, timeout: float) -> dict[str, Any]:
    SLEEP_AT.clear()
    WOKE.clear()
    name = "p4" if paced else "p4burst"
    async with _engine(url) as engine:
        wf = engine.register(SleepW, name=name)
        rows = [{"id": f"{name}-{i}", "params": {"ms": sleep_s * 1000}} for i in range(n)]
        t0 = time.perf_counter()
        if paced:
            # "started within one second": ten batches, one every 100 ms.
            chunk = max(1, n // 10)
            for k, i in enumerate(range(0, n, chunk)):
                await asyncio.sleep(max(0.0, t0 + k * 0.1 - time.perf_counter()))
                await wf.create_batch({"instances": rows[i : i + chunk]})
        else:
            await _create_many(wf, rows)
        created_s = time.perf_counter() - t0
        await _wait_status(engine, name, "complete", n, every=0.05, timeout=timeout)
    late = [WOKE[i] - (SLEEP_AT[i] + sleep_s) for i in WOKE if i in SLEEP_AT]
    spread = max(SLEEP_AT.values()) - min(SLEEP_AT.values()) if SLEEP_AT else 0.0
    return {"create_s": created_s, "start_spread_ms": spread * 1000, "lateness": summary_ms(late)}


async def phase4(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    """Timers: instances started over one second (paced), and all at once (burst) for comparison."""
    n, sleep_s = int(sizes["p4_instances"]), float(sizes["p4_sleep_s"])
    paced = await _timers(url, n, sleep_s, paced=True, timeout=sizes["timeout_s"])
    burst = await _timers(url, n, sleep_s, paced=False, timeout=sizes["timeout_s"])
    return {
        "instances": n,
        "sleep_s": sleep_s,
        "create_s": paced["create_s"],
        "start_spread_s": paced["start_spread_ms"] / 1000,
        "lateness": paced["lateness"],
        "burst": burst,
    }


async def _await_arrival(iid: str, timeout: float) -> tuple[float, float]:
    return await asyncio.wait_for(ARRIVED[iid], timeout)


async def phase5(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    n, nx = int(sizes["p5_events"]), int(sizes["p5_cross_events"])
    ARRIVED.clear()
    loop = asyncio.get_running_loop()
    async with _engine(url) as engine:
        assert engine.worker is not None
        poll = engine.worker.poll_interval
        wf = engine.register(EventW, name="p5")
        ids = [f"e{i}" for i in range(n)]
        xids = [f"x{i}" for i in range(nx)]
        for iid in ids + xids:
            ARRIVED[iid] = loop.create_future()
        await _create_many(wf, [{"id": i} for i in ids + xids])
        await _wait_status(engine, "p5", "waiting", n + nx, every=0.01, timeout=sizes["timeout_s"])
        inproc = []
        for iid in ids:
            inst = await wf.get(iid)
            t0 = time.perf_counter()
            await inst.send_event(type="go", payload={"i": iid})
            t1, _ = await _await_arrival(iid, 30)
            inproc.append(t1 - t0)
        cross = await _cross_process(url, "stepstone", xids)
    return {"in_process": summary_ms(inproc), "cross_process": summary_ms(cross), "worker_poll_interval_s": poll}


async def _cross_process(url: str, engine: str, ids: list[str]) -> list[float]:
    """Events sent by another process (``bench.sender``); latency from its send call to our arrival."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.sender",
        engine,
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert ready.strip() == b"ready", ready
    out = []
    try:
        for iid in ids:
            proc.stdin.write(f"{iid}\n".encode())
            await proc.stdin.drain()
            t_send = float((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
            _, wall = await _await_arrival(iid, 30)
            out.append(wall - t_send)
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)
    return out


async def phase6(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    n = int(sizes["p6_instances"])
    gc.collect()
    async with _engine(url) as engine:
        wf = engine.register(HibW, name="p6")
        base = rss_mb()
        t0 = time.perf_counter()
        await _create_many(wf, [{"id": f"h{i}"} for i in range(n)])
        created_s = time.perf_counter() - t0
        await _wait_status(engine, "p6", "waiting", n, every=0.25, timeout=sizes["timeout_s"])
        hib_s = time.perf_counter() - t0
        gc.collect()
        await asyncio.sleep(1.0)
        mem = rss_mb()
        running = engine.worker.busy if engine.worker else None
    return {
        "instances": n,
        "baseline_rss_mb": base["rss_mb"],
        **mem,
        "kb_per_instance": (mem["rss_mb"] - base["rss_mb"]) * 1024 / n,
        "create_s": created_s,
        "all_hibernated_s": hib_s,
        "in_memory_runs": running,
    }


async def phase7(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    from bench.recovery import run_trials

    return await run_trials("stepstone", url, int(sizes["p7_trials"]))


# -- roles for helper processes ------------------------------------------------------------------------------
async def sender(url: str) -> None:
    """Read instance ids on stdin; send each a ``go`` event; print the wall time just before sending."""
    loop = asyncio.get_running_loop()
    async with Engine(url, worker=False) as engine:
        wf = engine.workflow("p5")
        print("ready", flush=True)
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            inst = await wf.get(line.strip())
            t = time.time()
            await inst.send_event(type="go", payload={"from": os.getpid()})
            print(repr(t), flush=True)
