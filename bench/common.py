"""Shared pieces of the benchmark: sizes, percentiles, RSS, fresh databases."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PG_BASE = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432")
"""Server URL (no database) for PostgreSQL engines; each phase gets a fresh database on it."""

ROOT = Path(__file__).resolve().parent
TMP_PARENT = Path(os.environ.get("BENCH_TMP", str(ROOT / ".tmp")))
"""Where SQLite files live: on the project's disk, not tmpfs, so fsync is real."""

ENGINES = ("stepstone-sqlite", "stepstone-postgres", "dbos-sqlite", "dbos-postgres")
PHASES = ("1", "2", "3", "4", "5", "6", "7")

PHASE_TITLES = {
    "1": "per-step overhead",
    "2": "throughput",
    "3": "creation",
    "4": "timers",
    "5": "events",
    "6": "memory",
    "7": "recovery",
}

# One set of sizes per mode; every engine gets the same workload (DBOS's phase 6 is capped, see p6_cap_dbos).
SIZES: dict[str, dict[str, float]] = {
    "full": {
        "p1_steps": 200,
        "p1_warmup": 1000,
        "p2_instances": 200,
        "p2_steps": 10,
        "p3_singles": 1000,
        "p3_batches": 10,
        "p3_batch": 100,
        "p4_instances": 1000,
        "p4_sleep_s": 1.0,
        "p5_events": 50,
        "p5_cross_events": 20,
        "p6_instances": 100_000,
        "p6_cap_dbos": 10_000,
        "p7_trials": 3,
        "ceiling_commits": 2000,
        "timeout_s": 900,
    },
    "quick": {
        "p1_steps": 100,
        "p2_instances": 50,
        "p2_steps": 10,
        "p3_singles": 200,
        "p3_batches": 2,
        "p3_batch": 100,
        "p4_instances": 100,
        "p4_sleep_s": 1.0,
        "p5_events": 10,
        "p5_cross_events": 5,
        "p6_instances": 2000,
        "p6_cap_dbos": 1000,
        "p7_trials": 1,
        "ceiling_commits": 300,
        "timeout_s": 300,
    },
    "tiny": {
        "p1_steps": 20,
        "p2_instances": 10,
        "p2_steps": 5,
        "p3_singles": 20,
        "p3_batches": 1,
        "p3_batch": 20,
        "p4_instances": 10,
        "p4_sleep_s": 0.3,
        "p5_events": 3,
        "p5_cross_events": 2,
        "p6_instances": 200,
        "p6_cap_dbos": 100,
        "p7_trials": 1,
        "ceiling_commits": 50,
        "timeout_s": 60,
    },
}


def pct(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100), nearest-rank on the sorted values; None when empty."""
    if not values:
        return None
    data = sorted(values)
    k = max(0, min(len(data) - 1, round(q / 100 * (len(data) - 1))))
    return data[k]


def summary_ms(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50 / p99 / mean / max in milliseconds of durations given in seconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": pct(ms, 50),
        "p99_ms": pct(ms, 99),
        "mean_ms": (sum(ms) / len(ms)) if ms else None,
        "max_ms": max(ms) if ms else None,
    }


def rss_mb(pid: int | str = "self") -> dict[str, float]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in MB."""
    out: dict[str, float] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out["rss_mb" if key == "VmRSS" else "peak_rss_mb"] = int(value.split()[0]) / 1024
    return out


@dataclass
class FreshDB:
    """A fresh database for one engine and phase: a SQLite file in a new folder, or a new PostgreSQL database."""

    engine: str
    url: str
    tmpdir: Path
    pg_name: str | None = None

    @classmethod
    def create(cls, engine: str) -> FreshDB:
        TMP_PARENT.mkdir(parents=True, exist_ok=True)
        tmpdir = Path(tempfile.mkdtemp(prefix=f"{engine}-", dir=TMP_PARENT))
        if engine.endswith("-sqlite"):
            return cls(engine, f"sqlite:///{tmpdir / 'bench.db'}", tmpdir)
        name = f"bench_{engine.replace('-', '_')}_{uuid.uuid4().hex[:10]}"
        _pg_admin(f'CREATE DATABASE "{name}"')
        return cls(engine, f"{PG_BASE}/{name}", tmpdir, name)

    def drop(self) -> None:
        if self.pg_name is not None:
            try:
                _pg_admin(f'DROP DATABASE IF EXISTS "{self.pg_name}" WITH (FORCE)')
            except Exception as exc:  # pragma: no cover - best effort cleanup
                print(f"warning: could not drop {self.pg_name}: {exc}", file=sys.stderr)
        shutil.rmtree(self.tmpdir, ignore_errors=True)


def _pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(f"{PG_BASE}/postgres", autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql)  # type: ignore[arg-type]


def pg_reachable() -> str | None:
    """None when the PostgreSQL server answers, else why not."""
    try:
        import psycopg

        with psycopg.connect(f"{PG_BASE}/postgres", connect_timeout=3) as conn:
            conn.execute("SELECT 1")
        return None
    except Exception as exc:
        return f"PostgreSQL at {PG_BASE} unreachable: {exc}"


def engine_unavailable(engine: str) -> str | None:
    """None when the engine can run here, else the reason it is skipped."""
    if engine.startswith("dbos"):
        try:
            import dbos  # noqa: F401
        except ImportError:
            return "dbos is not installed (pip install -e '.[bench]')"
    if engine == "stepstone-postgres":
        try:
            import stepstone.storage.postgres  # type: ignore[import-not-found]  # noqa: F401
        except ImportError as exc:
            return f"stepstone.storage.postgres not yet available ({exc})"
    if engine.endswith("-postgres"):
        return pg_reachable()
    return None


def now_wall() -> float:
    return time.time()
