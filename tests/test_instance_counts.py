"""The instance counts kept by triggers (stepstone.storage.counts_sql) agree with ``COUNT(*)`` after every kind of
change, on SQLite and PostgreSQL: creates, status changes, control operations, deletes, the purge, a worker
SIGKILLed mid-run, concurrent writers; and the migration backfills a database made at the version before it."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from stepstone import Engine
from stepstone.models import DEFAULT_ACCOUNT, NewInstance, StepRef
from stepstone.storage import postgres_schema, sqlite_schema, storage_for_url
from stepstone.storage.base import Storage
from stepstone.storage.counts_sql import POSTGRES_MIGRATION, SQLITE_MIGRATION
from stepstone.testing import wait_for_status
from tests.crash.worker import Crashy, expected_total
from tests.test_storage_contract import T0, WF, A, claim, create, step, workflow

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'counts.db'}"
    value: str = request.getfixturevalue("postgres_url")
    return value


@pytest.fixture
async def db(url: str) -> AsyncIterator[Storage]:
    storage = storage_for_url(url)
    await storage.open()
    await storage.put_workflow(workflow())
    yield storage
    await storage.close()


def truth(url: str, wf: str = WF, account: str = A) -> dict[str, int]:
    """``COUNT(*)`` per status, read directly from the database."""
    query = "SELECT status, COUNT(*) FROM instances WHERE account = {m} AND workflow = {m} GROUP BY status"
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return dict(conn.execute(query.format(m="?"), (account, wf)).fetchall())
    with psycopg.connect(url) as pg:
        return {s: int(n) for s, n in pg.execute(query.format(m="%s"), (account, wf)).fetchall()}


def counts_rows(url: str) -> set[str]:
    """The workflows with a row in the counts (and, on PostgreSQL, the deltas)."""
    if url.startswith("sqlite"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            return {r[0] for r in conn.execute("SELECT workflow FROM instance_counts")}
    with psycopg.connect(url) as pg:
        query = "SELECT workflow FROM instance_counts UNION SELECT workflow FROM instance_count_deltas"
        return {r[0] for r in pg.execute(query).fetchall()}


async def agrees(db: Storage, url: str, wf: str = WF) -> dict[str, int]:
    """Every read of the counts equals the truth; returns it."""
    expected = truth(url, wf)
    assert await db.count_by_status(A, wf) == expected
    assert await db.count_queued(A, wf) == expected.get("queued", 0)
    assert (await db.list_instances(A, wf, limit=1)).total == sum(expected.values())
    for status in ("queued", "running", "complete", "errored", "terminated", "paused", "waiting"):
        assert (await db.list_instances(A, wf, status=status, limit=1)).total == expected.get(status, 0)
    return expected


async def test_counts_follow_every_change(db: Storage, url: str) -> None:
    assert await agrees(db, url) == {}
    await create(db, "a", "b", "c")
    await db.create_instances([NewInstance(WF, f"batch-{i}", "{}", T0) for i in range(40)], skip_existing=False)
    await db.create_instances([NewInstance(WF, "a", "{}", T0), NewInstance(WF, "d", "{}", T0)], skip_existing=True)
    assert await agrees(db, url) == {"queued": 44}
    claims = await claim(db, limit=5)
    assert (await agrees(db, url))["running"] == 5
    done, errs, pausing, waits, restarted = claims
    await db.finish(
        done.lease, now=T0 + 2, status="complete", output="1", error_name=None, error_message=None, retention_ms=1000
    )
    await db.finish(
        errs.lease, now=T0 + 2, status="errored", output=None, error_name="E", error_message="m", retention_ms=1000
    )
    await db.suspend(waits.lease, now=T0 + 2, wake_at=T0 + 100, waiting_for="timer", wait_types=())
    await db.pause(A, WF, pausing.instance.id, now=T0 + 2)  # running → waitingForPause
    await db.pause_drained(pausing.lease, now=T0 + 2)
    await db.pause(A, WF, "batch-20", now=T0 + 2)  # queued → paused
    assert (await agrees(db, url))["paused"] == 2
    await db.resume(A, WF, "batch-20", now=T0 + 3)
    await db.resume(A, WF, pausing.instance.id, now=T0 + 3)
    await db.terminate(A, WF, waits.instance.id, now=T0 + 3, retention_ms=1000)
    await db.terminate(A, WF, "batch-30", now=T0 + 3, retention_ms=1000, rollback=True)
    await db.put_step(restarted.lease, step("s", 0), durable=True)
    await db.restart(A, WF, restarted.instance.id, now=T0 + 3, from_step=StepRef("s"))
    await db.restart(A, WF, done.instance.id, now=T0 + 3, from_step=None)
    await agrees(db, url)
    assert await db.delete_instances(A, WF, ["batch-1", "batch-2", "nope"]) == ["batch-1", "batch-2"]
    await agrees(db, url)
    assert await db.purge_expired(now=T0 + 10) >= 2  # the errored one, the terminated ones
    after_purge = await agrees(db, url)
    assert "errored" not in after_purge
    await db.put_workflow(workflow("other"))
    await create(db, "x", "y", wf="other")
    assert await agrees(db, url, "other") == {"queued": 2}
    assert await db.delete_workflow(A, WF)
    assert await agrees(db, url) == {}
    assert counts_rows(url) == {"other"}  # the deleted workflow's zero rows (and its deltas) are gone
    assert await agrees(db, url, "other") == {"queued": 2}
    # a workflow of the same name made again starts from zero
    await db.put_workflow(workflow())
    await create(db, "again")
    assert await agrees(db, url) == {"queued": 1}


async def test_other_filters_still_count_rows(db: Storage, url: str) -> None:
    await create(db, "early", at=T0)
    await create(db, "late", at=T0 + 50)
    page = await db.list_instances(A, WF, created_after=T0 + 10, limit=10)
    assert page.total == 1 and [i.id for i in page.items] == ["late"]
    assert (await db.list_instances(A, WF, status="rollingBack", limit=10)).total == 0


async def test_purge_batches_keep_counts(db: Storage, url: str) -> None:
    db.purge_batch = 7  # type: ignore[attr-defined]
    await db.create_instances([NewInstance(WF, f"p{i}", "{}", T0) for i in range(30)], skip_existing=False)
    for c in await claim(db, limit=30):
        await db.finish(
            c.lease, now=T0 + 2, status="complete", output="1", error_name=None, error_message=None, retention_ms=1000
        )
    assert await agrees(db, url) == {"complete": 30}
    assert await db.purge_expired(now=T0 + 10) == 30
    assert await agrees(db, url) == {}


@pytest.mark.stepstone_postgres
async def test_concurrent_writers_and_folds_on_postgres(postgres_url: str) -> None:
    """Two storages (two pools: two worker processes' connections) create, claim and finish at once while
    reads fold the deltas; the counts stay exact."""
    stores = [storage_for_url(postgres_url) for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        await stores[0].put_workflow(workflow())

        async def work(s: Storage, k: int) -> None:
            for r in range(6):
                await s.create_instances(
                    [NewInstance(WF, f"w{k}-{r}-{i}", "{}", T0) for i in range(60)], skip_existing=False
                )
                for c in await claim(s, limit=40, owner=f"w{k}"):
                    await s.finish(
                        c.lease,
                        now=T0 + 2,
                        status="complete",
                        output="1",
                        error_name=None,
                        error_message=None,
                        retention_ms=1000,
                    )
                await s.count_by_status(A, WF)  # a read that may fold while the other writes

        await asyncio.gather(
            *(work(s, k) for k, s in enumerate(stores)), *(work(s, k + 2) for k, s in enumerate(stores))
        )
        expected = truth(postgres_url)
        assert sum(expected.values()) == 4 * 6 * 60
        for s in stores:
            assert await s.count_by_status(A, WF) == expected
        # Whether a read folded meanwhile depends on timing (a read folds past FOLD_AT deltas; a fold running
        # makes the other skip); the worker's minutely purge run folds whatever is left, and changes no count.
        assert await stores[0].purge_expired(now=T0) == 0
        with psycopg.connect(postgres_url) as pg:
            (left,) = pg.execute("SELECT COUNT(*) FROM instance_count_deltas").fetchone() or (0,)
        assert left == 0
        for s in stores:
            assert await s.count_by_status(A, WF) == expected
    finally:
        for s in stores:
            await s.close()


def start_worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash.worker", url, str(log)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
async def test_sigkilled_worker_leaves_exact_counts(url: str, tmp_path: Path) -> None:
    """A worker SIGKILLed mid-run (on PostgreSQL two worker processes, both killed) leaves the counts exact."""
    log = tmp_path / "executions.log"
    async with Engine(url, worker=False) as client:
        wf = client.register(Crashy, name="crashy")
        await wf.create_batch({"instances": [{"id": f"i{n}", "params": {"n": n}} for n in range(12)]})
        storage = client.storage
        # PostgreSQL: a second worker process writes at the same time
        other = start_worker(url, log) if url.startswith("postgres") else None
        proc = start_worker(url, log)
        try:
            # kill it mid-run: once some instances run
            for _ in range(600):
                if (await storage.count_by_status(A, "crashy")).get("running", 0) >= 3:
                    break
                await asyncio.sleep(0.05)
            for p in (proc, other):  # both at once: nothing writes while the counts are compared
                if p is not None:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
            mid = truth(url, "crashy")
            assert mid.get("running", 0) >= 3
            assert await storage.count_by_status(A, "crashy") == mid
            proc = start_worker(url, log)
            other = start_worker(url, log) if other is not None else None
            for n in range(12):
                status = await wait_for_status(await wf.get(f"i{n}"), "complete", timeout=120)
                assert status.output == {"n": n, "total": expected_total(n)}
        finally:
            for p in (proc, other):
                if p is not None:
                    p.send_signal(signal.SIGKILL)
                    p.wait()
        assert await storage.count_by_status(A, "crashy") == truth(url, "crashy") == {"complete": 12}
        assert (await storage.list_instances(A, "crashy", limit=1)).total == 12


async def test_migration_backfills_a_database_of_the_previous_version(url: str) -> None:
    """A database at the version before the counts' migration, with instances in it, gets exact counts."""
    rows = [("local", WF, f"i{i}", ("queued", "running", "complete")[i % 3]) for i in range(30)]
    rows += [("acme", WF, "a1", "errored"), ("local", "other", "o1", "paused")]
    insert = (
        "INSERT INTO instances (account, workflow, id, status, params, created_on, modified_on) "
        "VALUES ({m}, {m}, {m}, {m}, '{{}}', 1.0, 1.0)"
    )
    meta = "INSERT INTO stepstone_meta (key, value) VALUES ('schema_version', {m})"
    if url.startswith("sqlite"):
        before = sqlite_schema.MIGRATIONS.index(SQLITE_MIGRATION)
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("CREATE TABLE stepstone_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for migration in sqlite_schema.MIGRATIONS[:before]:
                for statement in sqlite_schema.migration_statements(migration):
                    conn.execute(statement)
            conn.executemany(insert.format(m="?"), rows)
            conn.execute(meta.format(m="?"), (str(before),))
    else:
        before = postgres_schema.MIGRATIONS.index(POSTGRES_MIGRATION)
        with psycopg.connect(url) as pg:
            pg.execute("CREATE TABLE stepstone_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            for migration in postgres_schema.MIGRATIONS[:before]:
                for statement in sqlite_schema.migration_statements(migration):
                    pg.execute(statement)  # type: ignore[call-overload]
            pg.cursor().executemany(insert.format(m="%s"), rows)
            pg.execute(meta.format(m="%s"), (str(before),))
    storage = storage_for_url(url)
    await storage.open()
    try:
        assert await storage.count_by_status(DEFAULT_ACCOUNT, WF) == {"queued": 10, "running": 10, "complete": 10}
        assert await storage.count_by_status("acme", WF) == {"errored": 1}
        assert await storage.count_by_status(DEFAULT_ACCOUNT, "other") == {"paused": 1}
        assert (await storage.list_instances(DEFAULT_ACCOUNT, WF, limit=1)).total == 30
        await storage.put_workflow(workflow())
        await create(storage, "new")
        assert await agrees(storage, url) == {"queued": 11, "running": 10, "complete": 10}
    finally:
        await storage.close()
