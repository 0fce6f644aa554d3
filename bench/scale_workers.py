"""PostgreSQL with 1, 2, 4 … worker processes (``bench.workers``' roles), with the CPU each side spent per step.

For each N: a fresh database, N worker processes, a client creating ``instances`` × ``steps`` with
``create_batch``; steps/s from the first create to the last completion. Beside it, measured from ``/proc`` and
``pg_stat_database``: the workers' CPU seconds per step, the database backends' CPU seconds per step, and the
transactions committed per step. :func:`model` turns those into what N machines would reach.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from typing import Any

from bench.workers import Steps, _drop_db, _fresh_db

TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


def _db_state(url: str) -> tuple[dict[int, float], int]:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        pids = [r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (name,))]
        row = conn.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (name,)).fetchone()
    return {p: _cpu_s(p) for p in pids}, int(row[0]) if row else 0


async def measure(workers: int, instances: int, steps: int) -> dict[str, Any]:
    from stepstone import Engine

    url = await asyncio.to_thread(_fresh_db)
    procs: list[asyncio.subprocess.Process] = []
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
            await asyncio.sleep(0.5)
            w0 = {p.pid: _cpu_s(p.pid) for p in procs}
            db0, x0 = await asyncio.to_thread(_db_state, url)
            rows = [{"id": f"i{i}", "params": {"n": steps}} for i in range(instances)]
            t0 = time.perf_counter()
            await asyncio.gather(*(wf.create_batch({"instances": rows[i : i + 100]}) for i in range(0, instances, 100)))
            while (await client.storage.count_by_status("local", "steps")).get("complete", 0) < instances:
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - t0
            w1 = {p.pid: _cpu_s(p.pid) for p in procs}
            await asyncio.sleep(1.0)  # backends report their transaction counts when idle
            db1, x1 = await asyncio.to_thread(_db_state, url)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            await proc.wait()
        await asyncio.to_thread(_drop_db, url)
    n = instances * steps
    return {
        "workers": workers,
        "steps": n,
        "steps_per_s": n / elapsed,
        "worker_cpu_ms_per_step": sum(w1[p] - w0.get(p, 0.0) for p in w1) * 1000 / n,
        "db_cpu_ms_per_step": sum(c - db0.get(p, 0.0) for p, c in db1.items()) * 1000 / n,
        "transactions_per_step": (x1 - x0) / n,
    }


def model(
    points: list[dict[str, Any]], cores: int, db_cores: int, ns: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
) -> dict[str, Any]:
    """What N worker machines would reach, from the one-worker point's CPU costs.

    A worker is one event loop: alone it does at most ``1 / worker_cpu`` steps/s. The database spends
    ``db_cpu`` per step on its backends. On this machine everything shares ``cores``:
    ``here(N) = min(N / worker_cpu, cores / (worker_cpu + db_cpu))``. With each worker on its own machine and the
    database on ``db_cores``: ``apart(N) = min(N / worker_cpu, db_cores / db_cpu)``; the commit rate is not the
    bound because step writes share group commits (``transactions_per_step`` ≪ 1 under load).
    """
    one = next(p for p in points if p["workers"] == 1)
    w = one["worker_cpu_ms_per_step"] / 1000
    d = one["db_cpu_ms_per_step"] / 1000
    here = {p["workers"]: min(p["workers"] / w, cores / (w + d)) if w and w + d else None for p in points}
    apart = {n: min(n / w, db_cores / d) if w and d else None for n in ns}
    saturates = (db_cores / d) * w if w and d else None
    return {
        "worker_cpu_ms_per_step": w * 1000,
        "db_cpu_ms_per_step": d * 1000,
        "cores_here": cores,
        "db_cores": db_cores,
        "predicted_here": here,
        "predicted_apart": apart,
        "db_saturates_at_workers": saturates,
    }


async def run(counts: list[int], instances: int, steps: int) -> dict[str, Any]:
    points = []
    for n in counts:
        points.append(await measure(n, instances, steps))
        print(f"  {n} worker(s): {points[-1]['steps_per_s']:,.0f} steps/s", file=sys.stderr)
    cores = os.cpu_count() or 1
    return {"points": points, "model": model(points, cores, cores)}
