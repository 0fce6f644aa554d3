"""The disk's own ceiling, measured in the same run: single-row commits per second.

SQLite: WAL, ``synchronous=FULL``, one ``INSERT`` per transaction, on the same filesystem as the benchmark's
databases. PostgreSQL (when reachable): one ``INSERT`` per autocommit transaction over one connection.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import PG_BASE, TMP_PARENT, FreshDB, pg_reachable, summary_ms


def sqlite_ceiling(n: int) -> dict[str, Any]:
    TMP_PARENT.mkdir(parents=True, exist_ok=True)
    d = Path(tempfile.mkdtemp(prefix="ceiling-", dir=TMP_PARENT))
    try:
        conn = sqlite3.connect(d / "c.db", isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        times = []
        t0 = time.perf_counter()
        for i in range(n):
            a = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            conn.execute("COMMIT")
            times.append(time.perf_counter() - a)
        wall = time.perf_counter() - t0
        conn.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return {"commits": n, "commits_per_s": n / wall, "commit": summary_ms(times)}


def pg_ceiling(n: int) -> dict[str, Any] | None:
    if pg_reachable() is not None:
        return None
    import psycopg

    db = FreshDB.create("ceiling-postgres")
    try:
        with psycopg.connect(db.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (id BIGSERIAL PRIMARY KEY, v TEXT)")
            times = []
            t0 = time.perf_counter()
            for i in range(n):
                a = time.perf_counter()
                conn.execute("INSERT INTO t (v) VALUES (%s)", (f"row {i}",))
                times.append(time.perf_counter() - a)
            wall = time.perf_counter() - t0
            sc = conn.execute("SHOW synchronous_commit").fetchone()
    finally:
        db.drop()
    return {
        "commits": n,
        "commits_per_s": n / wall,
        "commit": summary_ms(times),
        "synchronous_commit": sc[0] if sc else None,
        "server": PG_BASE,
    }
