"""The SQLite writer preallocates a new database's WAL at open (so the first steps don't pay for its growth);
the preallocation's rolled-back frames never become data, also after a SIGKILL."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from stepstone import Engine, WorkflowEntrypoint
from stepstone.storage.sqlite_wal import preallocate_wal
from stepstone.testing import wait_for_status

ROOT = Path(__file__).resolve().parent.parent


class Steps(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        total = 0
        for i in range(int(event.payload["n"])):
            total += await step.do(f"s{i}", lambda i=i: i)
        return total


def _target(conn: sqlite3.Connection) -> int:
    page = conn.execute("PRAGMA page_size").fetchone()[0]
    pages = conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
    return int(32 + pages * (page + 24))


def _check(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "stepstone_wal_preallocation" not in tables
    return conn


async def test_a_new_database_starts_with_its_wal_at_checkpoint_size(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    async with Engine(f"sqlite:///{path}") as engine:
        wal = Path(f"{path}-wal")
        with sqlite3.connect(path) as probe:
            target = _target(probe)
        assert wal.stat().st_size >= target
        wf = engine.register(Steps, name="steps")
        inst = await wf.create(id="a", params={"n": 50})
        assert (await wait_for_status(inst, "complete", timeout=30)).output == sum(range(50))
        assert wal.stat().st_size >= target  # overwritten in place, not grown
    conn = _check(path)
    assert conn.execute("SELECT COUNT(*) FROM steps").fetchone()[0] == 50
    conn.close()
    # reopened: SQLite deleted the WAL at close; the new writer grows it again, the data is there
    async with Engine(f"sqlite:///{path}") as engine:
        assert Path(f"{path}-wal").stat().st_size >= target
        inst = await engine.register(Steps, name="steps").get("a")
        assert (await inst.status()).output == sum(range(50))


async def test_no_preallocation_without_a_sync_per_commit(tmp_path: Path) -> None:
    path = tmp_path / "normal.db"
    async with Engine(f"sqlite:///{path}", synchronous="NORMAL"):
        with sqlite3.connect(path) as probe:
            target = _target(probe)
        assert Path(f"{path}-wal").stat().st_size < target


def test_preallocation_is_skipped_when_the_wal_is_already_large(tmp_path: Path) -> None:
    path = str(tmp_path / "x.db")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (v)")
    assert preallocate_wal(conn, path, "FULL") > 0
    assert preallocate_wal(conn, path, "FULL") == 0
    assert preallocate_wal(conn, path, "OFF") == 0
    conn.execute("INSERT INTO t VALUES (1)")
    assert conn.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1
    conn.close()
    _check(Path(path)).close()


def test_a_killed_process_leaves_only_its_committed_rows(tmp_path: Path) -> None:
    """SIGKILL after the preallocation and some commits: recovery keeps the commits, drops the spilled frames."""
    path = tmp_path / "killed.db"
    script = textwrap.dedent(
        f"""
        import sqlite3, sys, time
        from stepstone.storage.sqlite_wal import preallocate_wal
        conn = sqlite3.connect({str(path)!r}, isolation_level=None)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE t (v INTEGER)")
        assert preallocate_wal(conn, {str(path)!r}, "FULL") > 0
        for i in range(20):
            conn.execute("INSERT INTO t VALUES (?)", (i,))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t VALUES (-1)")  # never committed
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    proc.stdout.close()
    conn = _check(path)
    assert [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")] == list(range(20))
    conn.close()
