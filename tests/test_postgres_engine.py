"""The engine on PostgreSQL: end to end, cross-process signals, schema checks and isolation."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from stepstone import Engine, WorkflowEntrypoint
from stepstone.errors import SchemaVersionError, StorageError
from stepstone.models import NewInstance, WorkflowRecord
from stepstone.storage.postgres import PostgresStorage
from stepstone.testing import wait_for_status

pytestmark = pytest.mark.postgres


class Flow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        a = await step.do("a", lambda: 1)
        await step.sleep("nap", 200)
        ev = await step.wait_for_event("approval", "approval", timeout="1 minute")
        return {"a": a, "ok": ev.payload["ok"]}


class Slow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("forever", lambda: asyncio.sleep(3600))
        return None


async def test_steps_sleep_and_event_end_to_end(postgres_url: str) -> None:
    async with Engine(postgres_url, poll_interval=0.2) as engine:
        wf = engine.register(Flow, name="flow")
        inst = await wf.create(id="one")
        await wait_for_status(inst, "waiting", timeout=10)
        await asyncio.sleep(0.5)
        await inst.send_event(type="approval", payload={"ok": True})
        status = await wait_for_status(inst, "complete", timeout=10)
        assert status.output == {"a": 1, "ok": True}


async def test_notify_wakes_a_worker_in_another_engine_at_once(postgres_url: str) -> None:
    """The worker polls every 30 s; a create, an event and a terminate from a client reach it in well under."""
    async with Engine(postgres_url, poll_interval=30) as worker, Engine(postgres_url, worker=False) as client:
        worker.register(Flow, name="flow")
        worker.register(Slow, name="slow")
        await asyncio.sleep(0.3)  # the worker's first, empty claim
        wf = client.register(Flow, name="flow")
        started = time.monotonic()
        inst = await wf.create(id="x")
        await wait_for_status(inst, "waiting", timeout=5)
        await asyncio.sleep(0.4)  # the sleep ends; the timer is the worker's own
        await wait_for_status(inst, "waiting", timeout=5)
        await inst.send_event(type="approval", payload={"ok": False})
        assert (await wait_for_status(inst, "complete", timeout=5)).output == {"a": 1, "ok": False}
        assert time.monotonic() - started < 5

        slow = await client.register(Slow, name="slow").create(id="s")
        await wait_for_status(slow, "running", timeout=5)
        assert worker.worker is not None
        await asyncio.sleep(0.2)
        assert worker.worker.busy == 1
        await slow.terminate()
        for _ in range(100):
            if worker.worker.busy == 0:
                break
            await asyncio.sleep(0.02)
        assert worker.worker.busy == 0  # the in-flight step was stopped by the signal, not the lease


async def test_a_late_abort_does_not_cancel_the_restarted_run(postgres_url: str) -> None:
    async with Engine(postgres_url, poll_interval=30) as worker, Engine(postgres_url, worker=False) as client:
        worker.register(Slow, name="slow")
        inst = await client.register(Slow, name="slow").create(id="s")
        await wait_for_status(inst, "running", timeout=5)
        await inst.restart()
        await asyncio.sleep(1.0)
        assert worker.worker is not None and worker.worker.busy == 1
        rec = await client.storage.get_instance("local", "slow", "s")
        assert rec is not None and rec.status == "running" and rec.generation == 1


async def test_newer_schema_is_refused(postgres_url: str) -> None:
    storage = PostgresStorage(postgres_url)
    await storage.open()
    await storage.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE stepstone_meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(SchemaVersionError, match="99"):
        await PostgresStorage(postgres_url).open()


async def test_unreachable_server_is_a_storage_error() -> None:
    with pytest.raises(StorageError, match="cannot open"):
        await PostgresStorage("postgresql://postgres@127.0.0.1:1/nothing?connect_timeout=1").open()


async def test_schemas_isolate_tenants_and_their_signals(postgres_url: str) -> None:
    a = PostgresStorage(postgres_url, schema="tenant_a")
    b = PostgresStorage(postgres_url, schema="tenant_b")
    await a.open()
    await b.open()
    try:
        seen: list[tuple[int, str]] = []
        await b.subscribe(lambda pk, kind: seen.append((pk, kind)))
        await asyncio.sleep(0.3)
        for s in (a, b):
            await s.put_workflow(WorkflowRecord("wf", "C", "", "v", 1.0, 1.0))
        await a.create_instances([NewInstance("wf", "only-a", "{}", 1.0)], skip_existing=False)
        await asyncio.sleep(0.3)
        assert seen == []
        assert await b.get_instance("local", "wf", "only-a") is None
        await b.create_instances([NewInstance("wf", "in-b", "{}", 1.0)], skip_existing=False)
        await b.terminate("local", "wf", "in-b", now=2.0, retention_ms=1000)
        for _ in range(50):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.02)
        rec = await b.get_instance("local", "wf", "in-b")
        assert rec is not None and seen == [(0, "new"), (rec.pk, "abort")]
    finally:
        await a.close()
        await b.close()


async def test_group_commit_shares_commits(postgres_url: str) -> None:
    storage = PostgresStorage(postgres_url)
    await storage.open()
    try:
        await storage.put_workflow(WorkflowRecord("wf", "C", "", "v", 1.0, 1.0))
        await storage.create_instances([NewInstance("wf", f"i{n}", "{}", 1.0) for n in range(50)], skip_existing=False)
        claims = (await storage.claim(owner="w", now=2.0, lease_seconds=30, limit=50, workflows=["wf"])).claims
        from stepstone.models import StepRecord, step_key

        await asyncio.gather(
            *(
                storage.put_step(
                    c.lease, StepRecord(step_key("do", "s", 1), "do", "s", 1, 1, "success", 2.0), durable=True
                )
                for c in claims
            )
        )
        commits, writes = storage.commit_stats
        assert writes == 50 and commits < 10
    finally:
        await storage.close()
