"""psycopg 3 vs asyncpg on stepstone's hot path: one fenced step upsert committed per transaction.

Usage: ``python bench/pg_drivers.py [postgresql://postgres@127.0.0.1:5432/test]``. Creates and drops its own
tables in a scratch schema. Prints transactions per second, sequential on one connection (latency) and with 64
concurrent tasks on a pool of 10 (throughput), for each driver.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable

import asyncpg
import psycopg
from psycopg_pool import AsyncConnectionPool

SETUP = """
DROP SCHEMA IF EXISTS bench_drivers CASCADE;
CREATE SCHEMA bench_drivers;
CREATE TABLE bench_drivers.instances (pk BIGINT PRIMARY KEY, lease_token TEXT);
CREATE TABLE bench_drivers.steps (instance_pk BIGINT, key TEXT, status TEXT, result TEXT, ended_at DOUBLE PRECISION,
    PRIMARY KEY (instance_pk, key));
INSERT INTO bench_drivers.instances SELECT g, 'tok' || g FROM generate_series(1, 1000) g;
"""
UPSERT = (
    "WITH fence AS (SELECT pk FROM bench_drivers.instances WHERE pk = {0} AND lease_token = {1} FOR UPDATE) "
    "INSERT INTO bench_drivers.steps SELECT fence.pk, {2}, 'success', {3}, {4} FROM fence "
    "ON CONFLICT (instance_pk, key) DO UPDATE SET status = excluded.status, result = excluded.result, "
    "ended_at = excluded.ended_at"
)
PG_SQL = UPSERT.format("%s", "%s", "%s", "%s", "%s")
APG_SQL = UPSERT.format("$1", "$2", "$3", "$4", "$5")


def args(i: int) -> tuple[object, ...]:
    pk = i % 1000 + 1
    return (pk, f"tok{pk}", f"do\x1fstep\x1f{i}", '{"value": 42}', time.time())


async def timed(n: int, concurrency: int, one: Callable[[int], Awaitable[None]]) -> float:
    counter = iter(range(n))

    async def runner() -> None:
        for i in counter:
            await one(i)

    start = time.perf_counter()
    await asyncio.gather(*(runner() for _ in range(concurrency)))
    return n / (time.perf_counter() - start)


async def psycopg_bench(url: str, n: int, concurrency: int) -> float:
    async with AsyncConnectionPool(url, min_size=10, max_size=10, open=False) as pool:
        await pool.open(wait=True)

        async def one(i: int) -> None:
            async with pool.connection() as conn:
                await conn.execute(PG_SQL, args(i))

        await timed(200, concurrency, one)  # warm up (and let psycopg prepare the statement)
        return await timed(n, concurrency, one)


async def asyncpg_bench(url: str, n: int, concurrency: int) -> float:
    pool = await asyncpg.create_pool(url, min_size=10, max_size=10)
    try:

        async def one(i: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(APG_SQL, *args(i))

        await timed(200, concurrency, one)
        return await timed(n, concurrency, one)
    finally:
        await pool.close()


async def main(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in SETUP.split(";"):
            if statement.strip():
                conn.execute(statement)  # type: ignore[call-overload]
    try:
        for label, concurrency, n in (("sequential", 1, 3000), ("64 tasks, pool of 10", 64, 20000)):
            for name, bench in (("psycopg 3", psycopg_bench), ("asyncpg", asyncpg_bench)):
                rates = [await bench(url, n, concurrency) for _ in range(3)]
                best = ", ".join(f"{r:.0f}" for r in rates)
                print(f"{label:22} {name:10} {max(rates):8.0f} tx/s (runs: {best})")
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA bench_drivers CASCADE")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/test"))
