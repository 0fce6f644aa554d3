"""Event ids on SQLite are per instance (its rows clustered by instance, one page per step write): each id is the
instance's highest + 1, a restart that deletes events never lets an id be handed out again (a ``gap`` row keeps the
highest), and the migration keeps every existing row and id. The cursor rule on both backends: after a restart,
every new event's id is above every id a subscriber saw before it."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from stepstone import Engine, WorkflowEntrypoint
from stepstone.models import DEFAULT_ACCOUNT
from stepstone.storage import sqlite_schema, storage_for_url
from stepstone.testing import wait_for_status

PER_INSTANCE_IDS = next(i for i, m in enumerate(sqlite_schema.MIGRATIONS) if "instance_events_by_pk" in str(m))


async def noop() -> None:
    return None


class Parks(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        for i in range(3):
            await step.do(f"s{i}", noop)
        got = await step.wait_for_event("go", "go", timeout="1 hour")
        return got.payload


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ids.db'}"
    return str(request.getfixturevalue("postgres_url"))


async def _events(engine: Engine, instance_id: str, after: int = -1) -> list[Any]:
    _, events = await engine.storage.read_stream(DEFAULT_ACCOUNT, "parks", instance_id, after=after, limit=1000)
    return events


async def _parked(engine: Engine, instance_id: str) -> None:
    for _ in range(1000):
        events = await _events(engine, instance_id)
        if any(e.type == "wait_started" for e in events):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never parked")


@pytest.mark.parametrize("from_step", [None, {"name": "s1"}])
async def test_after_a_restart_every_new_id_is_above_every_id_seen(url: str, from_step: Any) -> None:
    async with Engine(url) as engine:
        wf = engine.register(Parks, name="parks")
        other = await wf.create(id="other")  # another instance's events interleave on PostgreSQL's global ids
        inst = await wf.create(id="one")
        await _parked(engine, "one")
        await _parked(engine, "other")
        before = await _events(engine, "one")
        seen = max(e.event_id for e in before)
        await inst.restart(from_step)
        await _parked(engine, "one")
        after = await _events(engine, "one", seen)
        assert after, "the restarted run's events are there after the old cursor"
        assert all(e.event_id > seen for e in after)
        assert after[0].type in ("workflow_queued", "workflow_running")
        everything = await _events(engine, "one")
        ids = [e.event_id for e in everything]
        assert ids == sorted(set(ids))  # rising, none twice
        assert all(e.type != "gap" for e in everything)
        await inst.send_event("go", {"ok": True})
        await other.send_event("go", {})
        assert (await wait_for_status(inst, "complete", timeout=30)).output == {"ok": True}


def test_the_migration_keeps_rows_and_ids_and_ids_go_on_per_instance(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE stepstone_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for migration in sqlite_schema.MIGRATIONS[:PER_INSTANCE_IDS]:
            for statement in sqlite_schema.migration_statements(migration):
                conn.execute(statement)
        for i in range(3):  # the insert trigger writes each one's workflow_queued with a global AUTOINCREMENT id
            conn.execute(
                "INSERT INTO instances (account, workflow, id, status, params, created_on, modified_on) "
                "VALUES ('local', 'parks', ?, 'queued', '{}', 1.0, 1.0)",
                (f"i{i}",),
            )
        conn.execute("UPDATE instances SET status = 'running', modified_on = 2.0 WHERE id = 'i0'")
        conn.execute("INSERT INTO stepstone_meta (key, value) VALUES ('schema_version', ?)", (str(PER_INSTANCE_IDS),))
        old = conn.execute("SELECT instance_pk, event_id, type FROM instance_events ORDER BY 1, 2").fetchall()
    assert len(old) == 4

    async def migrate() -> None:
        storage = storage_for_url(f"sqlite:///{path}")
        await storage.open()
        await storage.close()

    asyncio.run(migrate())
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT instance_pk, event_id, type FROM instance_events ORDER BY 1, 2").fetchall() == old
        ddl = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'instance_events'").fetchone()[0]
        assert "WITHOUT ROWID" in ddl
        assert (
            conn.execute("SELECT name FROM sqlite_master WHERE name = 'instance_events_by_instance'").fetchone() is None
        )
        pk0 = conn.execute("SELECT pk FROM instances WHERE id = 'i0'").fetchone()[0]
        highest = conn.execute("SELECT MAX(event_id) FROM instance_events WHERE instance_pk = ?", (pk0,)).fetchone()[0]
        conn.execute("UPDATE instances SET status = 'complete', modified_on = 3.0 WHERE pk = ?", (pk0,))
        new = conn.execute(
            "SELECT event_id, type FROM instance_events WHERE instance_pk = ? AND event_id > ?", (pk0, highest)
        ).fetchall()
        assert new == [(highest + 1, "workflow_completed")]
        conn.execute(
            "INSERT INTO instances (account, workflow, id, status, params, created_on, modified_on) "
            "VALUES ('local', 'parks', 'fresh', 'queued', '{}', 4.0, 4.0)"
        )
        fresh = conn.execute(
            "SELECT e.event_id, e.type FROM instance_events e JOIN instances i ON i.pk = e.instance_pk "
            "WHERE i.id = 'fresh'"
        ).fetchall()
        assert fresh == [(1, "workflow_queued")]
