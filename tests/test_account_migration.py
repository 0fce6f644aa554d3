"""The migration that made the account part of every key keeps a database's data, in the default account.

A database is built with the schema as it was before accounts (the earlier migrations, applied as an older
stepstone applied them), filled through that schema's own columns, then opened by this stepstone: every
workflow, instance, step and buffered event is there, under ``local``, with its pk; the old uniqueness becomes
per account (the same id may now exist in another account); and the engine runs the migrated instance on.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest

from stepstone import Engine, WorkflowEntrypoint
from stepstone.models import DEFAULT_ACCOUNT, NewInstance
from stepstone.storage import postgres_schema, sqlite_schema, storage_for_url
from stepstone.storage.base import Storage

# the version that added accounts, per backend
ACCOUNTS_SQLITE = 1 + next(i for i, m in enumerate(sqlite_schema.MIGRATIONS) if "CREATE TABLE workflows_new" in m)
ACCOUNTS_POSTGRES = 1 + next(i for i, m in enumerate(postgres_schema.MIGRATIONS) if "ADD COLUMN account" in m)

WORKFLOW = (
    "INSERT INTO workflows (name, class_name, script_name, version_id, created_on, modified_on, triggered_on, config) "
    "VALUES ('orders', 'Orders', 'shop', 'v-old', 10.0, 11.0, 12.0, '{\"limits\": {\"steps\": 7}}')"
)
INSTANCES = [
    "INSERT INTO instances (pk, workflow, id, status, params, created_on, modified_on, runnable_at, wait_types, "
    "waiting_for, version_id) VALUES (41, 'orders', 'o-1', 'waiting', '{\"n\":1}', 20.0, 21.0, NULL, ',paid,', "
    "'{\"kind\":\"wait\"}', 'v-old')",
    "INSERT INTO instances (pk, workflow, id, status, params, created_on, modified_on, output, version_id) "
    "VALUES (42, 'orders', 'o-2', 'complete', '{\"n\":2}', 22.0, 23.0, '\"done\"', 'v-old')",
]
STEP = (
    "INSERT INTO steps (instance_pk, key, kind, name, count, seq, status, started_at, ended_at, result) "
    "VALUES (41, 'do\x1fcharge\x1f1', 'do', 'charge', 1, 0, 'success', 20.0, 20.5, '\"charged\"')"
)
EVENT = "INSERT INTO events (pk, instance_pk, type, payload, received_at) VALUES (7, 41, 'other', '{\"x\":1}', 24.0)"


class Orders(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        charged = await step.do("charge", lambda: "charged again")  # replayed from the migrated history
        paid = await step.wait_for_event("paid", "paid", timeout="1 hour")
        return {"charged": charged, "paid": paid.payload}


def _old_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE stepstone_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    for migration in sqlite_schema.MIGRATIONS[: ACCOUNTS_SQLITE - 1]:
        for statement in migration.split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("INSERT INTO stepstone_meta VALUES ('schema_version', ?)", (str(ACCOUNTS_SQLITE - 1),))
    for statement in (WORKFLOW, *INSTANCES, STEP, EVENT):
        conn.execute(statement)
    conn.close()


def _old_postgres(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE stepstone_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        for migration in postgres_schema.MIGRATIONS[: ACCOUNTS_POSTGRES - 1]:
            for statement in migration.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("INSERT INTO stepstone_meta VALUES ('schema_version', %s)", (str(ACCOUNTS_POSTGRES - 1),))
        for statement in (WORKFLOW, *INSTANCES, STEP, EVENT):
            conn.execute(statement)
        conn.execute("SELECT setval('instances_pk_seq', 42)")
        conn.execute("SELECT setval('events_pk_seq', 7)")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def old_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "old.db"
        _old_sqlite(path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    _old_postgres(url)
    return url


async def _check_migrated(storage: Storage) -> None:
    (workflow,) = await storage.list_workflows(None)
    assert (workflow.account, workflow.name, workflow.class_name, workflow.version_id) == (
        DEFAULT_ACCOUNT,
        "orders",
        "Orders",
        "v-old",
    )
    assert (workflow.created_on, workflow.triggered_on, workflow.config) == (10.0, 12.0, '{"limits": {"steps": 7}}')
    # the versions migration made the workflow's current version its first version (no diagram: no code read)
    (version,) = await storage.list_versions(DEFAULT_ACCOUNT, "orders")
    assert (version.id, version.class_name, version.created_on, version.modified_on, version.graph) == (
        "v-old",
        "Orders",
        10.0,
        11.0,
        None,
    )
    assert version.config == '{"limits": {"steps": 7}}'
    waiting = await storage.get_instance(DEFAULT_ACCOUNT, "orders", "o-1")
    done = await storage.get_instance(DEFAULT_ACCOUNT, "orders", "o-2")
    assert waiting is not None and done is not None
    assert (waiting.pk, waiting.status, waiting.params, waiting.account) == (41, "waiting", '{"n":1}', DEFAULT_ACCOUNT)
    assert (done.pk, done.status, done.output) == (42, "complete", '"done"')
    steps, events = await storage.load_history(41)
    assert [(s.name, s.result) for s in steps] == [("charge", '"charged"')]
    assert [(e.pk, e.type, e.payload) for e in events] == [(7, "other", '{"x":1}')]
    assert await storage.count_by_status(DEFAULT_ACCOUNT, "orders") == {"waiting": 1, "complete": 1}
    # the old key (workflow, id) is now per account: the same id is free in another account
    assert await storage.get_instance("acme", "orders", "o-1") is None
    (other,) = await storage.create_instances(
        [NewInstance("orders", "o-1", "{}", 30.0, account="acme")], skip_existing=False
    )
    assert other.account == "acme" and other.pk not in (41, 42)


async def test_the_migration_keeps_every_row_in_the_default_account(old_database: str) -> None:
    storage = storage_for_url(old_database)
    await storage.open()
    try:
        await _check_migrated(storage)
    finally:
        await storage.close()
    again = storage_for_url(old_database)  # opening again migrates nothing more
    await again.open()
    try:
        assert len(await again.list_workflows(None)) == 1
    finally:
        await again.close()


async def test_the_engine_runs_a_migrated_instance_on(old_database: str) -> None:
    async with Engine(old_database, poll_interval=0.05) as engine:
        wf = engine.register(Orders, name="orders", class_name="Orders", script_name="shop")
        handle = await wf.get("o-1")
        await handle.send_event("paid", {"amount": 3})
        for _ in range(400):
            if (await handle.status()).status == "complete":
                break
            await asyncio.sleep(0.025)
        assert (await handle.status()).output == {"charged": "charged", "paid": {"amount": 3}}
        assert [w.name for w in await engine.list_workflows()] == ["orders"]
        # registered code is a new version; the migrated instance says the old one created it and the new one ran
        # it, and its replay (the recorded "charge", then the new wait) did not diverge
        versions = await engine.storage.list_versions("local", "orders")
        assert [v.id for v in versions][1:] == ["v-old"] and versions[0].graph is not None
        doc = await handle.describe()
        assert doc["versionId"] == "v-old" and doc["ran_versions"][-1]["id"] == versions[0].id
        assert doc["divergence"] is None
