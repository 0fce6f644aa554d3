"""Why a brand-new SQLite database's first steps cost more, and what fixes it (issue 15, item 1).

    .venv/bin/python -m bench.fresh_db                 # 5 rounds of 200 commits / steps per variant (≈ 1 min)
    .venv/bin/python -m bench.fresh_db --rounds 1 --n 20 --json out.json

Two sets of variants, all in the same run and interleaved round by round (the disk is shared, so only same-run
comparisons mean anything):

- bare commits (the shape of ``bench/ceiling.py``, WAL, ``synchronous=FULL``, one row per commit) on a new file
  with each SQLite option the issue lists: nothing, ``journal_size_limit``, a smaller ``wal_autocheckpoint``,
  ``mmap_size``, the WAL preallocated (``stepstone.storage.sqlite_wal``), and the same file after 1,000 commits;
- stepstone itself, one instance of sequential no-op steps: on a new database with and without the WAL
  preallocation, on a database reopened by a new engine (SQLite deleted its WAL at close), and after a
  1,000-step warm-up.

Each variant's figure is the median over the rounds of that round's p50 (and p90) per commit or step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

from bench.common import TMP_PARENT, pct
from bench.impl_stepstone import STAMPS, StepsW
from stepstone import Engine
from stepstone.storage.sqlite import SQLiteStorage
from stepstone.storage.sqlite_wal import preallocate_wal

Setup = Callable[[sqlite3.Connection, str], None]


def _nothing(conn: sqlite3.Connection, path: str) -> None:
    return None


def _pragma(sql: str) -> Setup:
    def setup(conn: sqlite3.Connection, path: str) -> None:
        conn.execute(sql)

    return setup


def _prealloc(conn: sqlite3.Connection, path: str) -> None:
    preallocate_wal(conn, path, "FULL")


BARE: dict[str, tuple[Setup, int]] = {
    "new file": (_nothing, 0),
    "new file, journal_size_limit=4 MiB": (_pragma("PRAGMA journal_size_limit = 4194304"), 0),
    "new file, wal_autocheckpoint=100": (_pragma("PRAGMA wal_autocheckpoint = 100"), 0),
    "new file, mmap_size=256 MiB": (_pragma("PRAGMA mmap_size = 268435456"), 0),
    "new file, WAL preallocated": (_prealloc, 0),
    "after 1,000 commits": (_nothing, 1000),
}


def bare(setup: Setup, warm: int, n: int) -> list[float]:
    d = Path(tempfile.mkdtemp(prefix="fresh-", dir=TMP_PARENT))
    path = str(d / "c.db")
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        setup(conn, path)
        times = []
        for i in range(warm + n):
            a = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (v) VALUES (?)", (f"row {i}",))
            conn.execute("COMMIT")
            times.append(time.perf_counter() - a)
        conn.close()
        return times[warm:]
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def _steps(engine: Engine, iid: str, n: int, *, stamp: bool) -> list[float]:
    STAMPS.clear()
    wf = engine.register(StepsW, name="fresh")
    inst = await wf.create(id=iid, params={"steps": n, "stamp": stamp})
    while (await inst.status()).status not in ("complete", "errored"):
        await asyncio.sleep(0.02)
    return [b - a for a, b in pairwise(STAMPS)]


async def stepstone(variant: str, n: int) -> list[float]:
    d = Path(tempfile.mkdtemp(prefix="fresh-", dir=TMP_PARENT))
    url = f"sqlite:///{d / 'bench.db'}"
    try:
        if variant.startswith(("reopened", "after")):
            async with Engine(url) as engine:
                await _steps(engine, "warm-up", 1000, stamp=False)
                if variant == "after 1,000 steps":
                    return await _steps(engine, "one", n, stamp=True)
        engine = Engine(url)
        assert isinstance(engine.storage, SQLiteStorage)
        engine.storage.wal_preallocation = not variant.endswith("no preallocation")
        async with engine:
            return await _steps(engine, "one", n, stamp=True)
    finally:
        shutil.rmtree(d, ignore_errors=True)


STEPSTONE = (
    "new database, no preallocation",
    "new database",
    "reopened, no preallocation",
    "reopened",
    "after 1,000 steps",
)
STEPSTONE_LABELS = {
    "new database, no preallocation": "new database, WAL not preallocated (before)",
    "new database": "new database (after: WAL preallocated at open)",
    "reopened, no preallocation": "reopened by a new engine after 1,000 steps, WAL not preallocated (before)",
    "reopened": "reopened by a new engine after 1,000 steps (after)",
    "after 1,000 steps": "after a 1,000-step warm-up",
}


def run(rounds: int, n: int) -> dict[str, Any]:
    TMP_PARENT.mkdir(parents=True, exist_ok=True)
    raw: dict[str, list[list[float]]] = {}
    for _ in range(rounds):
        for name, (setup, warm) in BARE.items():
            raw.setdefault(f"bare: {name}", []).append(bare(setup, warm, n))
        for variant in STEPSTONE:
            raw.setdefault(f"stepstone: {STEPSTONE_LABELS[variant]}", []).append(asyncio.run(stepstone(variant, n)))
    out: dict[str, Any] = {"rounds": rounds, "n": n, "variants": {}}
    for name, runs in raw.items():
        p50s = [pct([t * 1000 for t in r], 50) or 0.0 for r in runs]
        p90s = [pct([t * 1000 for t in r], 90) or 0.0 for r in runs]
        out["variants"][name] = {
            "p50_ms": statistics.median(p50s),
            "p90_ms": statistics.median(p90s),
            "p50_by_round_ms": p50s,
        }
    ref = out["variants"]["bare: after 1,000 commits"]["p50_ms"]
    for v in out["variants"].values():
        v["x_warm_bare_commit"] = v["p50_ms"] / ref if ref else None
    return out


def table(result: dict[str, Any]) -> str:
    lines = [
        "| variant | p50 (ms) | p90 (ms) | p50 / warm bare commit |",
        "| --- | --- | --- | --- |",
    ]
    for name, v in result["variants"].items():
        lines.append(f"| {name} | {v['p50_ms']:.3f} | {v['p90_ms']:.3f} | {v['x_warm_bare_commit']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fresh_db", description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=200, help="commits / steps timed per variant and round")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    result = run(args.rounds, args.n)
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
