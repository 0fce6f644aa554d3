"""The seven phases on DBOS Transact, with its equivalent calls: ``@DBOS.step``, ``@DBOS.workflow``,
``DBOS.start_workflow_async``, ``DBOS.sleep_async``, ``DBOS.send_async`` / ``DBOS.recv_async``.

DBOS runs with its defaults (``system_database_url`` only), as a user gets it out of the box.
"""

from __future__ import annotations

import asyncio
import gc
import time
from itertools import pairwise
from typing import Any

from dbos import DBOS, SetWorkflowID

from bench.common import rss_mb, summary_ms

STAMPS: list[float] = []
SLEEP_AT: dict[str, float] = {}
WOKE: dict[str, float] = {}
READY: set[str] = set()
ARRIVED: dict[str, asyncio.Future[tuple[float, float]]] = {}
LOOP: asyncio.AbstractEventLoop | None = None


@DBOS.step()
async def noop() -> None:
    return None


@DBOS.step()
async def stamp() -> None:
    STAMPS.append(time.perf_counter())


@DBOS.workflow()
async def steps_wf(n: int, with_stamp: bool) -> int:
    for _ in range(n):
        if with_stamp:
            await stamp()
        else:
            await noop()
    return n


@DBOS.step()
async def after(wid: str) -> None:
    WOKE.setdefault(wid, time.time())


@DBOS.workflow()
async def sleep_wf(seconds: float) -> None:
    wid = DBOS.workflow_id
    assert wid is not None
    SLEEP_AT.setdefault(wid, time.time())
    await DBOS.sleep_async(seconds)
    await after(wid)


def _arrive(wid: str, stamps: tuple[float, float]) -> None:
    fut = ARRIVED.get(wid)
    if fut is not None and not fut.done():
        fut.set_result(stamps)


@DBOS.workflow()
async def event_wf() -> None:
    wid = DBOS.workflow_id
    assert wid is not None
    READY.add(wid)
    await DBOS.recv_async("go", timeout_seconds=3600)
    stamps = (time.perf_counter(), time.time())
    assert LOOP is not None
    LOOP.call_soon_threadsafe(_arrive, wid, stamps)


@DBOS.workflow()
async def hib_wf() -> None:
    wid = DBOS.workflow_id
    assert wid is not None
    READY.add(wid)
    await DBOS.sleep_async(3600)


class _Dbos:
    def __init__(self, url: str) -> None:
        self.url = url

    async def __aenter__(self) -> _Dbos:
        global LOOP
        LOOP = asyncio.get_running_loop()
        DBOS(config={"name": "bench", "system_database_url": self.url, "log_level": "WARNING"})
        DBOS.launch()
        return self

    async def __aexit__(self, *exc: object) -> None:
        DBOS.destroy(destroy_registry=False)


async def _start(fn: Any, wid: str, *args: Any) -> Any:
    with SetWorkflowID(wid):
        return await DBOS.start_workflow_async(fn, *args)


async def _start_many(fn: Any, ids: list[str], *args: Any, parallel: int = 100) -> list[Any]:
    handles: list[Any] = []
    for i in range(0, len(ids), parallel):
        handles += await asyncio.gather(*(_start(fn, wid, *args) for wid in ids[i : i + parallel]))
    return handles


async def _wait_until(pred: Any, timeout: float, every: float = 0.005) -> None:
    deadline = time.perf_counter() + timeout
    while not pred():
        if time.perf_counter() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(every)


async def phase1(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    n = int(sizes["p1_steps"])
    STAMPS.clear()
    async with _Dbos(url):
        # As stepstone's: first on the brand-new database, then after a warm-up instance.
        t0 = time.perf_counter()
        await (await _start(steps_wf, "fresh", n, True)).get_result()
        fresh_s = time.perf_counter() - t0
        fresh = [b - a for a, b in pairwise(STAMPS)]
        await (await _start(steps_wf, "warm-up", int(sizes.get("p1_warmup", n)), False)).get_result()
        STAMPS.clear()
        t0 = time.perf_counter()
        h = await _start(steps_wf, "one", n, True)
        await h.get_result()
        t1 = time.perf_counter()
    gaps = [b - a for a, b in pairwise(STAMPS)]
    return {
        "steps": n,
        "per_step": summary_ms(gaps),
        "total_s": t1 - t0,
        "fresh": {"per_step": summary_ms(fresh), "total_s": fresh_s},
    }


async def phase2(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    n, k = int(sizes["p2_instances"]), int(sizes["p2_steps"])
    async with _Dbos(url):
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(_start(steps_wf, f"i{i}", k, False) for i in range(n)))
        t_created = time.perf_counter()
        await asyncio.gather(*(h.get_result() for h in handles))
        t1 = time.perf_counter()
    wall = t1 - t0
    return {
        "instances": n,
        "steps_per_instance": k,
        "wall_s": wall,
        "create_s": t_created - t0,
        "steps_per_s": n * k / wall,
    }


async def phase3(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    singles = int(sizes["p3_singles"])
    async with _Dbos(url):
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(_start(steps_wf, f"c{i}", 1, False) for i in range(singles)))
        single_s = time.perf_counter() - t0
        await asyncio.gather(*(h.get_result() for h in handles))
    return {
        "singles": singles,
        "single_s": single_s,
        "single_per_s": singles / single_s,
        "batched": None,
        "batch_per_s": None,
        "note": "DBOS has no batch-create call",
    }


async def phase4(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    n, sleep_s = int(sizes["p4_instances"]), float(sizes["p4_sleep_s"])
    SLEEP_AT.clear()
    WOKE.clear()
    async with _Dbos(url):
        t0 = time.perf_counter()
        handles = await asyncio.gather(*(_start(sleep_wf, f"t{i}", sleep_s) for i in range(n)))
        created_s = time.perf_counter() - t0
        await asyncio.gather(*(h.get_result() for h in handles))
    late = [WOKE[i] - (SLEEP_AT[i] + sleep_s) for i in WOKE if i in SLEEP_AT]
    spread = max(SLEEP_AT.values()) - min(SLEEP_AT.values()) if SLEEP_AT else 0.0
    return {
        "instances": n,
        "sleep_s": sleep_s,
        "create_s": created_s,
        "start_spread_s": spread,
        "lateness": summary_ms(late),
    }


async def phase5(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    n, nx = int(sizes["p5_events"]), int(sizes["p5_cross_events"])
    ARRIVED.clear()
    READY.clear()
    loop = asyncio.get_running_loop()
    async with _Dbos(url):
        ids = [f"e{i}" for i in range(n)]
        xids = [f"x{i}" for i in range(nx)]
        for wid in ids + xids:
            ARRIVED[wid] = loop.create_future()
        await _start_many(event_wf, ids + xids)
        await _wait_until(lambda: len(READY) >= n + nx, sizes["timeout_s"])
        await asyncio.sleep(0.5)  # let every recv register before the first send
        inproc = []
        for wid in ids:
            t0 = time.perf_counter()
            await DBOS.send_async(wid, {"i": wid}, "go")
            t1, _ = await asyncio.wait_for(ARRIVED[wid], 30)
            inproc.append(t1 - t0)
        cross = await _cross(url, xids)
    return {"in_process": summary_ms(inproc), "cross_process": summary_ms(cross)}


async def _cross(url: str, ids: list[str]) -> list[float]:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.sender",
        "dbos",
        url,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert ready.strip() == b"ready", ready
    out = []
    try:
        for wid in ids:
            proc.stdin.write(f"{wid}\n".encode())
            await proc.stdin.drain()
            t_send = float((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
            _, wall = await asyncio.wait_for(ARRIVED[wid], 30)
            out.append(wall - t_send)
    finally:
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)
    return out


async def phase6(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    n = min(int(sizes["p6_instances"]), int(sizes["p6_cap_dbos"]))
    READY.clear()
    gc.collect()
    async with _Dbos(url):
        base = rss_mb()
        t0 = time.perf_counter()
        await _start_many(hib_wf, [f"h{i}" for i in range(n)])
        created_s = time.perf_counter() - t0
        await _wait_until(lambda: len(READY) >= n, sizes["timeout_s"], every=0.1)
        await asyncio.sleep(1.0)
        hib_s = time.perf_counter() - t0
        gc.collect()
        mem = rss_mb()
    return {
        "instances": n,
        "capped_from": int(sizes["p6_instances"]) if n < int(sizes["p6_instances"]) else None,
        "baseline_rss_mb": base["rss_mb"],
        **mem,
        "kb_per_instance": (mem["rss_mb"] - base["rss_mb"]) * 1024 / n,
        "create_s": created_s,
        "all_hibernated_s": hib_s,
        "note": "DBOS keeps each sleeping workflow's coroutine in memory",
    }


async def phase7(url: str, sizes: dict[str, float]) -> dict[str, Any]:
    from bench.recovery import run_trials

    return await run_trials("dbos", url, int(sizes["p7_trials"]))
