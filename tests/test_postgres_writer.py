"""The PostgreSQL group writer: one batch, many instances, fencing per write and per-instance order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from stepstone.errors import FencedError
from stepstone.models import Lease, NewInstance, StepRecord, WorkflowRecord, step_key
from stepstone.storage.postgres import PostgresStorage

pytestmark = pytest.mark.postgres

WF = "wf"
T0 = 1_000.0


def step(name: str, seq: int, result: str = '"ok"', status: str = "success") -> StepRecord:
    return StepRecord(step_key("do", name, 1), "do", name, 1, seq, status, T0, T0, result=result)


@pytest.fixture
async def db(postgres_url: str) -> AsyncIterator[PostgresStorage]:
    storage = PostgresStorage(postgres_url)
    await storage.open()
    await storage.put_workflow(WorkflowRecord(WF, "Cls", "", "v1", T0, T0, None, "{}"))
    yield storage
    await storage.close()


async def leases(db: PostgresStorage, n: int) -> list[Lease]:
    await db.create_instances([NewInstance(WF, f"i{k}", "{}", T0) for k in range(n)], skip_existing=False)
    result = await db.claim(owner="w", now=T0 + 1, lease_seconds=30, limit=n, workflows=[WF])
    return [c.lease for c in result.claims]


async def test_one_batch_fences_only_the_stale_lease(db: PostgresStorage) -> None:
    held = await leases(db, 5)
    stale = Lease(held[2].pk, "not-the-token", held[2].generation)
    commits = db.commit_stats[0]
    writes = [db.put_step(lease, step("a", 1), durable=True) for lease in [*held[:2], stale, *held[3:]]]
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert db.commit_stats[0] == commits + 1  # one batch, one commit
    assert [isinstance(o, FencedError) for o in outcomes] == [False, False, True, False, False]
    for lease in held:
        steps, _ = await db.load_history(lease.pk)
        assert [s.name for s in steps] == ([] if lease.pk == stale.pk else ["a"])


async def test_same_step_twice_in_a_batch_keeps_the_last(db: PostgresStorage) -> None:
    (lease,) = await leases(db, 1)
    db.put_step(lease, step("a", 1, result=None, status="running"), durable=False)
    await db.put_step(lease, step("a", 1, result='"done"'), durable=True)
    steps, _ = await db.load_history(lease.pk)
    assert [(s.status, s.result) for s in steps] == [("success", '"done"')]


async def test_writes_after_a_finish_in_the_same_batch_are_fenced(db: PostgresStorage) -> None:
    first, second = await leases(db, 2)
    db.put_step(first, step("a", 1), durable=False)
    finish = asyncio.ensure_future(
        db.finish(
            first, now=T0 + 2, status="complete", output="1", error_name=None, error_message=None, retention_ms=1e6
        )
    )
    await asyncio.sleep(0)  # the finish is queued (usually into the same batch as what follows)
    late = db.put_step(first, step("b", 2), durable=True)
    other = db.put_step(second, step("a", 1), durable=True)
    outcomes = await asyncio.gather(finish, late, other, return_exceptions=True)
    assert outcomes[0] is None and isinstance(outcomes[1], FencedError) and outcomes[2] is None
    steps, _ = await db.load_history(first.pk)
    assert [s.name for s in steps] == ["a"]
    record = await db.get_instance("local", WF, "i0")
    assert record is not None and record.status == "complete"


async def test_suspend_sees_an_event_and_a_pause(db: PostgresStorage) -> None:
    first, second = await leases(db, 2)
    await db.send_event("local", WF, "i0", event_type="go", payload="{}", now=T0 + 2)
    await db.pause("local", WF, "i1", now=T0 + 2)
    got = await asyncio.gather(
        db.suspend(first, now=T0 + 3, wake_at=T0 + 100, waiting_for="w", wait_types=["go"]),
        db.suspend(second, now=T0 + 3, wake_at=T0 + 100, waiting_for="w", wait_types=["go"]),
    )
    assert got == ["waiting", "paused"]
    a, b = await db.get_instance("local", WF, "i0"), await db.get_instance("local", WF, "i1")
    assert a is not None and a.runnable_at == T0 + 3 and a.lease_token is None
    assert b is not None and b.runnable_at is None and b.paused_at == T0 + 3
    with pytest.raises(FencedError):
        await db.suspend(first, now=T0 + 4, wake_at=None, waiting_for="w", wait_types=[])


async def test_a_write_that_fails_does_not_fail_its_batch(db: PostgresStorage) -> None:
    first, second = await leases(db, 2)
    bad = db.put_step(first, step("a", 1, result="\x00"), durable=True)  # PostgreSQL text cannot hold NUL
    good = db.put_step(second, step("a", 1), durable=True)
    outcomes = await asyncio.gather(bad, good, return_exceptions=True)
    assert outcomes[1] is None and outcomes[0] is not None and not isinstance(outcomes[0], FencedError)
    steps, _ = await db.load_history(second.pk)
    assert [s.name for s in steps] == ["a"]
