"""One contract for every storage backend: each test runs on SQLite and on PostgreSQL with the same asserts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from stepstone.errors import (
    FencedError,
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidStateError,
    StorageError,
)
from stepstone.models import DEFAULT_ACCOUNT, Claim, Lease, NewInstance, StepRecord, StepRef, WorkflowRecord, step_key
from stepstone.storage import storage_for_url
from stepstone.storage.base import Storage

WF = "wf"
A = DEFAULT_ACCOUNT
T0 = 1_000.0
Opener = Callable[[], Awaitable[Storage]]


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'contract.db'}"
    value: str = request.getfixturevalue("postgres_url")
    return value


@pytest.fixture
async def opener(url: str) -> AsyncIterator[Opener]:
    """Opens storages on one database (two of them stand for two worker processes)."""
    opened: list[Storage] = []

    async def open_one() -> Storage:
        storage = storage_for_url(url)
        await storage.open()
        opened.append(storage)
        return storage

    yield open_one
    for storage in opened:
        await storage.close()


@pytest.fixture
async def db(opener: Opener) -> Storage:
    storage = await opener()
    await storage.put_workflow(workflow())
    return storage


def workflow(name: str = WF, config: str = "{}") -> WorkflowRecord:
    return WorkflowRecord(name, "Cls", "", "v1", T0, T0, None, config)


async def create(db: Storage, *ids: str, at: float = T0, wf: str = WF) -> None:
    await db.create_instances([NewInstance(wf, i, "{}", at) for i in ids], skip_existing=False)


async def claim(db: Storage, now: float = T0 + 1, limit: int = 10, owner: str = "w1", lease: float = 30) -> list[Claim]:
    result = await db.claim(owner=owner, now=now, lease_seconds=lease, limit=limit, workflows=[WF])
    return result.claims


def step(name: str, seq: int, *, status: str = "success", result: str | None = '"ok"', **kw: object) -> StepRecord:
    return StepRecord(step_key("do", name, 1), "do", name, 1, seq, status, T0, T0, result=result, **kw)  # type: ignore[arg-type]


# -- workflows ---------------------------------------------------------------------------------------------
async def test_workflows_put_get_list_delete(db: Storage) -> None:
    again = await db.put_workflow(workflow())
    assert again.version_id == "v1"
    changed = await db.put_workflow(WorkflowRecord(WF, "Other", "", "v2", T0 + 5, T0 + 5, None, "{}"))
    assert (changed.class_name, changed.version_id, changed.created_on) == ("Other", "v2", T0)
    await db.put_workflow(workflow("zz"))
    assert [w.name for w in await db.list_workflows(A)] == [WF, "zz"]
    assert (await db.get_workflow(A, "nope")) is None
    await create(db, "a", "b")
    assert await db.count_by_status(A, WF) == {"queued": 2}
    assert (await db.get_workflow(A, WF)).triggered_on == T0  # type: ignore[union-attr]
    assert await db.delete_workflow(A, WF) is True
    assert await db.delete_workflow(A, WF) is False
    assert await db.get_instance(A, WF, "a") is None


# -- instances ---------------------------------------------------------------------------------------------
async def test_create_refuses_or_skips_existing(db: Storage) -> None:
    await create(db, "a")
    with pytest.raises(InstanceExistsError):
        await create(db, "a")
    made = await db.create_instances(
        [NewInstance(WF, "a", "{}", T0), NewInstance(WF, "b", '{"x":1}', T0)], skip_existing=True
    )
    assert [r.id for r in made] == ["b"]
    rec = await db.get_instance(A, WF, "b")
    assert rec is not None and rec.status == "queued" and rec.params == '{"x":1}' and rec.runnable_at == T0


async def test_list_instances_pages_and_filters(db: Storage) -> None:
    for n in range(5):
        await create(db, f"i{n}", at=T0 + n)
    page = await db.list_instances(A, WF, limit=2, offset=1)
    assert page.total == 5 and [r.id for r in page.items] == ["i3", "i2"]
    page = await db.list_instances(A, WF, newest_first=False, created_after=T0 + 1, created_before=T0 + 3)
    assert [r.id for r in page.items] == ["i1", "i2", "i3"]
    assert (await db.list_instances(A, WF, status="running")).total == 0


async def test_every_page_matches_the_ordered_list_also_past_the_middle(db: Storage) -> None:
    """Pages past the middle are read from the other end: the same rows, in the same order."""
    for n in range(7):
        await create(db, f"i{n}", at=T0 + n // 2)  # ties on created_on: pk orders them
    for newest_first in (True, False):
        everything = (await db.list_instances(A, WF, limit=100, newest_first=newest_first)).items
        assert len(everything) == 7
        for limit in (1, 2, 3, 5):
            for offset in range(9):
                page = await db.list_instances(A, WF, limit=limit, offset=offset, newest_first=newest_first)
                assert page.total == 7
                assert [r.id for r in page.items] == [r.id for r in everything[offset : offset + limit]]


async def test_purge_works_in_batches_until_every_expired_instance_is_gone(db: Storage) -> None:
    db.purge_batch = 2  # type: ignore[attr-defined]
    await create(db, *(f"i{n}" for n in range(5)), "kept")
    for c in await claim(db):
        await db.put_step(c.lease, step("s", 1), durable=True)
        retention = 60_000 if c.instance.id == "kept" else 1000
        await db.finish(
            c.lease,
            now=T0 + 2,
            status="complete",
            output="1",
            error_name=None,
            error_message=None,
            retention_ms=retention,
        )
    assert await db.purge_expired(now=T0 + 10) == 5
    assert [r.id for r in (await db.list_instances(A, WF)).items] == ["kept"]
    kept = await db.get_instance(A, WF, "kept")
    assert kept is not None and len((await db.load_history(kept.pk))[0]) == 1
    assert await db.purge_expired(now=T0 + 10) == 0


async def test_expired_instance_id_can_be_reused(db: Storage) -> None:
    await create(db, "a")
    (c,) = await claim(db)
    await db.finish(
        c.lease, now=T0 + 2, status="complete", output="1", error_name=None, error_message=None, retention_ms=1000
    )
    await create(db, "a", at=T0 + 10)
    rec = await db.get_instance(A, WF, "a")
    assert rec is not None and rec.status == "queued" and rec.created_on == T0 + 10


# -- claims and leases -------------------------------------------------------------------------------------
async def test_claim_orders_by_due_time_and_leases(db: Storage) -> None:
    await create(db, "late", at=T0 + 0.5)
    await create(db, "early", at=T0)
    await create(db, "future", at=T0 + 100)
    result = await db.claim(owner="w1", now=T0 + 1, lease_seconds=30, limit=10, workflows=[WF])
    assert [c.instance.id for c in result.claims] == ["early", "late"]
    assert result.next_due == T0 + 100
    first = result.claims[0].instance
    assert (first.status, first.lease_owner, first.lease_expires_at, first.started_on) == (
        "running",
        "w1",
        T0 + 31,
        T0 + 1,
    )
    assert await claim(db, now=T0 + 2) == []  # leased: nobody else gets them
    assert await db.lease_owners() == ["w1"]
    # other workflows are not claimed
    assert (await db.claim(owner="w1", now=T0 + 1000, lease_seconds=30, limit=10, workflows=["zz"])).claims == []


async def test_expired_lease_is_taken_over_and_old_holder_is_fenced(db: Storage) -> None:
    await create(db, "a")
    (old,) = await claim(db, owner="w1", lease=5)
    assert await claim(db, now=T0 + 3, owner="w2") == []
    (new,) = await claim(db, now=T0 + 7, owner="w2")
    assert new.lease.token != old.lease.token
    with pytest.raises(FencedError):
        await db.put_step(old.lease, step("s", 1), durable=True)
    assert not (await db.renew(leases=[old.lease], until=T0 + 50))[old.lease.pk].held
    assert (await db.renew(leases=[new.lease], until=T0 + 50))[new.lease.pk].held
    await db.put_step(new.lease, step("s", 1), durable=True)
    steps, _ = await db.load_history(new.lease.pk)
    assert [s.name for s in steps] == ["s"]


async def test_renew_extends_and_reports_status(db: Storage) -> None:
    await create(db, "a")
    (c,) = await claim(db, lease=5)
    states = await db.renew(leases=[c.lease], until=T0 + 100)
    assert states[c.lease.pk].held and states[c.lease.pk].status == "running"
    assert await claim(db, now=T0 + 50, owner="w2") == []
    await db.pause(A, WF, "a", now=T0 + 51)
    assert (await db.renew(leases=[c.lease], until=T0 + 100))[c.lease.pk].status == "waitingForPause"
    gone = Lease(987654, "x", 0)
    assert not (await db.renew(leases=[gone], until=T0))[gone.pk].held


async def test_a_late_renewal_never_shortens_a_lease(db: Storage) -> None:
    # A renewal computed before a block of the loop and committed after it must not undo the watchdog's renewal
    # made meanwhile: the lease would look expired to other workers while its holder knows it confirmed.
    await create(db, "a")
    (c,) = await claim(db, lease=5)
    assert (await db.renew(leases=[c.lease], until=T0 + 100))[c.lease.pk].held
    assert (await db.renew(leases=[c.lease], until=T0 + 10))[c.lease.pk].held
    assert db.renew_blocking([c.lease], until=T0 + 20) == {c.lease.pk}
    assert await claim(db, now=T0 + 50, owner="w2") == []  # still leased until T0 + 100


async def test_release_gives_one_lease_up_and_is_fenced(db: Storage) -> None:
    await create(db, "a")
    await create(db, "b")
    held = await claim(db, lease=1000)
    a = next(c for c in held if c.instance.id == "a")
    assert not await db.release(Lease(a.lease.pk, "not-the-token", a.lease.generation))
    assert await claim(db, now=T0 + 2, owner="w2") == []
    assert await db.release(a.lease)
    (again,) = await claim(db, now=T0 + 2, owner="w2")  # at once, long before the lease would have expired
    assert again.instance.id == "a"
    assert not await db.release(a.lease)  # w2 holds it now: the old lease releases nothing


async def test_release_owners_frees_a_dead_workers_instances(db: Storage) -> None:
    await create(db, "a")
    await claim(db, owner="dead", lease=1000)
    assert await db.release_owners(["dead"]) == 1
    (c,) = await claim(db, now=T0 + 2, owner="alive")
    assert c.instance.lease_owner == "alive"


async def test_two_storages_racing_claim_each_instance_once(opener: Opener) -> None:
    a, b = await opener(), await opener()
    await a.put_workflow(workflow())
    await create(a, *(f"i{n}" for n in range(60)))

    async def claimer(storage: Storage, owner: str) -> list[int]:
        got: list[int] = []
        for _ in range(30):
            got += [c.lease.pk for c in await claim(storage, limit=3, owner=owner)]
        return got

    results = await asyncio.gather(*(claimer(s, f"w{n}") for n, s in enumerate([a, b, a, b, a, b])))
    everything = [pk for r in results for pk in r]
    assert len(everything) == len(set(everything)) == 60


# -- the run's writes --------------------------------------------------------------------------------------
async def test_steps_history_and_queued_writes_in_order(db: Storage) -> None:
    await create(db, "a")
    (c,) = await claim(db)
    pending = db.put_step(c.lease, step("one", 1, status="running", result=None), durable=False)
    await db.put_step(c.lease, step("one", 1, attempts=[]), durable=True)  # replaces the running row
    await pending
    await db.put_step(c.lease, step("two", 2, error_name="E", error_message="m", status="error"), durable=True)
    steps, events = await db.load_history(c.lease.pk)
    assert [(s.name, s.status, s.result) for s in steps] == [("one", "success", '"ok"'), ("two", "error", '"ok"')]
    assert events == []


async def test_terminate_and_restart_fence_the_run(db: Storage) -> None:
    await create(db, "a", "b")
    ca, cb = await claim(db)
    term = await db.terminate(A, WF, "a", now=T0 + 2, retention_ms=1000)
    assert term.status == "terminated" and term.generation == ca.lease.generation + 1
    with pytest.raises(InvalidStateError):
        await db.terminate(A, WF, "a", now=T0 + 3, retention_ms=1000)
    await db.put_step(cb.lease, step("one", 1), durable=True)
    await db.restart(A, WF, "b", now=T0 + 3, from_step=None)
    for lease in (ca.lease, cb.lease):
        with pytest.raises(FencedError):
            await db.put_step(lease, step("late", 9), durable=True)
        with pytest.raises(FencedError):
            await db.finish(
                lease, now=T0, status="complete", output="1", error_name=None, error_message=None, retention_ms=1
            )
    rec = await db.get_instance(A, WF, "b")
    assert rec is not None and rec.status == "queued" and rec.lease_token is None
    assert (await db.load_history(cb.lease.pk))[0] == []


async def test_restart_from_a_step_keeps_earlier_steps(db: Storage) -> None:
    await create(db, "a")
    (c,) = await claim(db)
    for n, name in enumerate(["x", "y", "z"], 1):
        await db.put_step(c.lease, step(name, n), durable=True)
    with pytest.raises(InvalidStateError):
        await db.restart(A, WF, "a", now=T0 + 2, from_step=StepRef("nope"))
    await db.restart(A, WF, "a", now=T0 + 2, from_step=StepRef("y"))
    assert [s.name for s in (await db.load_history(c.lease.pk))[0]] == ["x"]
    with pytest.raises(InstanceNotFoundError):
        await db.restart(A, WF, "missing", now=T0, from_step=None)


async def test_finish_records_output_and_retention(db: Storage) -> None:
    await create(db, "a")
    (c,) = await claim(db)
    await db.finish(
        c.lease, now=T0 + 2, status="errored", output=None, error_name="E", error_message="m", retention_ms=5000
    )
    rec = await db.get_instance(A, WF, "a")
    assert rec is not None
    assert (rec.status, rec.error_name, rec.ended_on, rec.expires_at, rec.lease_token, rec.runnable_at) == (
        "errored",
        "E",
        T0 + 2,
        T0 + 7,
        None,
        None,
    )
    assert await db.purge_expired(now=T0 + 6) == 0
    assert await db.purge_expired(now=T0 + 7) == 1
    assert await db.get_instance(A, WF, "a") is None


# -- hibernation and events --------------------------------------------------------------------------------
async def test_suspend_with_a_timer_then_wakes(db: Storage) -> None:
    await create(db, "a")
    (c,) = await claim(db)
    status = await db.suspend(c.lease, now=T0 + 2, wake_at=T0 + 60, waiting_for='{"kind":"sleep"}', wait_types=[])
    assert status == "waiting"
    rec = await db.get_instance(A, WF, "a")
    assert rec is not None and (rec.status, rec.runnable_at, rec.lease_token) == ("waiting", T0 + 60, None)
    with pytest.raises(FencedError):
        await db.put_step(c.lease, step("late", 2), durable=True)
    result = await db.claim(owner="w1", now=T0 + 30, lease_seconds=30, limit=5, workflows=[WF])
    assert result.claims == [] and result.next_due == T0 + 60
    (again,) = await claim(db, now=T0 + 61)
    assert again.instance.waiting_for is None


async def test_event_wakes_a_waiter_and_is_consumed_once(db: Storage) -> None:
    await create(db, "a")
    (c,) = await claim(db)
    await db.suspend(c.lease, now=T0 + 2, wake_at=None, waiting_for="{}", wait_types=["go"])
    await db.send_event(A, WF, "a", event_type="other", payload="0", now=T0 + 3)
    assert (await db.get_instance(A, WF, "a")).runnable_at is None  # type: ignore[union-attr]
    ev = await db.send_event(A, WF, "a", event_type="go", payload='{"v":1}', now=T0 + 4)
    assert (await db.get_instance(A, WF, "a")).runnable_at == T0 + 4  # type: ignore[union-attr]
    (c2,) = await claim(db, now=T0 + 5)
    _, events = await db.load_history(c2.lease.pk)
    assert [(e.type, e.payload) for e in events] == [("other", "0"), ("go", '{"v":1}')]
    wait = StepRecord(step_key("wait", "w", 1), "wait", "w", 1, 1, "success", T0, T0, result='{"v":1}')
    await db.consume_event(c2.lease, wait, ev.pk)
    _, events = await db.load_history(c2.lease.pk)
    assert [e.type for e in events] == ["other"]
    with pytest.raises(FencedError):
        await db.consume_event(c.lease, wait, ev.pk)


async def test_suspend_with_a_pending_event_stays_runnable(db: Storage) -> None:
    await create(db, "a")
    await db.send_event(A, WF, "a", event_type="go", payload="1", now=T0)
    (c,) = await claim(db)
    await db.suspend(c.lease, now=T0 + 2, wake_at=T0 + 99, waiting_for="{}", wait_types=["go"])
    assert (await db.get_instance(A, WF, "a")).runnable_at == T0 + 2  # type: ignore[union-attr]


async def test_send_event_to_finished_or_missing_instance(db: Storage) -> None:
    await create(db, "a")
    await db.terminate(A, WF, "a", now=T0, retention_ms=1000)
    with pytest.raises(InvalidStateError):
        await db.send_event(A, WF, "a", event_type="go", payload="1", now=T0)
    with pytest.raises(InstanceNotFoundError):
        await db.send_event(A, WF, "nope", event_type="go", payload="1", now=T0)


# -- pause and resume --------------------------------------------------------------------------------------
async def test_pause_running_drains_then_resume(db: Storage) -> None:
    await create(db, "a")
    (c,) = await claim(db)
    assert (await db.pause(A, WF, "a", now=T0 + 2)).status == "waitingForPause"
    assert (await db.resume(A, WF, "a", now=T0 + 3)).status == "running"
    await db.pause(A, WF, "a", now=T0 + 4)
    await db.pause_drained(c.lease, now=T0 + 5)
    rec = await db.get_instance(A, WF, "a")
    assert rec is not None and (rec.status, rec.paused_at, rec.lease_token) == ("paused", T0 + 5, None)
    assert (await db.resume(A, WF, "a", now=T0 + 9)).status == "queued"


async def test_pause_waiting_freezes_timers_and_resume_shifts_them(db: Storage) -> None:
    await create(db, "a")
    (c,) = await claim(db)
    nap = StepRecord(step_key("sleep", "nap", 1), "sleep", "nap", 1, 1, "waiting", T0, wake_at=T0 + 100)
    await db.put_step(c.lease, nap, durable=True)
    await db.suspend(c.lease, now=T0 + 10, wake_at=T0 + 100, waiting_for="{}", wait_types=[])
    paused = await db.pause(A, WF, "a", now=T0 + 20)
    assert (paused.status, paused.runnable_at) == ("paused", None)
    assert await claim(db, now=T0 + 200) == []
    resumed = await db.resume(A, WF, "a", now=T0 + 50)
    assert (resumed.status, resumed.runnable_at, resumed.paused_at) == ("queued", T0 + 50, None)
    steps, _ = await db.load_history(c.lease.pk)
    assert steps[0].wake_at == T0 + 130


async def test_suspend_while_pausing_parks_and_claim_parks_pausing(db: Storage) -> None:
    await create(db, "a", "b")
    ca, _ = await claim(db, lease=5)
    await db.pause(A, WF, "a", now=T0 + 2)
    assert await db.suspend(ca.lease, now=T0 + 3, wake_at=T0 + 9, waiting_for="{}", wait_types=[]) == "paused"
    await db.pause(A, WF, "b", now=T0 + 2)
    assert await claim(db, now=T0 + 100, owner="w2") == []  # b's lease expired while pausing: parked
    rec = await db.get_instance(A, WF, "b")
    assert rec is not None and rec.status == "paused"


# -- deletion ----------------------------------------------------------------------------------------------
async def test_delete_instances_fences_and_reports(db: Storage) -> None:
    await create(db, "a", "b")
    ca, _ = await claim(db)
    await db.put_step(ca.lease, step("s", 1), durable=True)
    assert await db.delete_instances(A, WF, ["a", "zz", "a"]) == ["a"]
    with pytest.raises(FencedError):
        await db.put_step(ca.lease, step("s", 2), durable=True)
    assert (await db.load_history(ca.lease.pk))[0] == []
    assert [r.id for r in (await db.list_instances(A, WF)).items] == ["b"]


# -- concurrency limits ------------------------------------------------------------------------------------
async def test_concurrency_limit_counts_running_across_workers(opener: Opener) -> None:
    a, b = await opener(), await opener()
    await a.put_workflow(workflow(config=json.dumps({"concurrency": {"limit": 2}})))
    await a.put_workflow(workflow("free"))
    await create(a, *(f"i{n}" for n in range(5)))
    await create(a, "f1", "f2", wf="free")
    both = [WF, "free"]
    first = await a.claim(owner="w1", now=T0 + 1, lease_seconds=30, limit=10, workflows=both)
    assert sorted(c.instance.id for c in first.claims) == ["f1", "f2", "i0", "i1"]
    assert (await b.claim(owner="w2", now=T0 + 1, lease_seconds=30, limit=10, workflows=both)).claims == []
    # a waiting instance frees its slot
    await a.suspend(first.claims[0].lease, now=T0 + 2, wake_at=T0 + 100, waiting_for="{}", wait_types=[])
    (c,) = (await b.claim(owner="w2", now=T0 + 3, lease_seconds=30, limit=10, workflows=both)).claims
    assert c.instance.id == "i2"
    # a dead worker's expired lease does not hold a slot
    later = await b.claim(owner="w2", now=T0 + 40, lease_seconds=30, limit=10, workflows=both)
    assert len([x for x in later.claims if x.instance.workflow == WF]) == 2


async def test_concurrency_limit_holds_under_racing_claims(opener: Opener) -> None:
    stores = [await opener() for _ in range(3)]
    await stores[0].put_workflow(workflow(config=json.dumps({"concurrency": {"limit": 3}})))
    await create(stores[0], *(f"i{n}" for n in range(30)))
    results = await asyncio.gather(*(claim(s, limit=5, owner=f"w{n}") for n, s in enumerate(stores * 3)))
    assert sum(len(r) for r in results) == 3


# -- signals and errors ------------------------------------------------------------------------------------
async def test_subscribe_returns_at_once(db: Storage) -> None:
    seen: list[tuple[int, str]] = []
    await asyncio.wait_for(db.subscribe(lambda pk, kind: seen.append((pk, kind))), 1.0)


async def test_driver_errors_surface_as_storage_errors(db: Storage) -> None:
    await create(db, "a")
    with pytest.raises(StorageError):
        await db.create_instances([NewInstance(WF, "b", None, T0)], skip_existing=False)  # type: ignore[arg-type]


# -- accounts ----------------------------------------------------------------------------------------------
async def test_accounts_partition_workflows_instances_and_events(opener: Opener) -> None:
    db = await opener()
    for account, cls in (("acme", "AcmeCls"), ("beta", "BetaCls")):
        await db.put_workflow(WorkflowRecord(WF, cls, "", "v1", T0, T0, None, "{}", account))
    # the same workflow name and the same instance id, in both accounts: two instances
    for account in ("acme", "beta"):
        await db.create_instances(
            [NewInstance(WF, "same", json.dumps({"of": account}), T0, account=account)], skip_existing=False
        )
    await db.create_instances([NewInstance(WF, "only-beta", "{}", T0, account="beta")], skip_existing=False)
    assert (await db.get_workflow("acme", WF)).class_name == "AcmeCls"  # type: ignore[union-attr]
    assert [w.account for w in await db.list_workflows("acme")] == ["acme"]
    assert sorted(w.account for w in await db.list_workflows(None)) == ["acme", "beta"]
    assert await db.get_workflow("nobody", WF) is None
    acme = await db.get_instance("acme", WF, "same")
    beta = await db.get_instance("beta", WF, "same")
    assert acme is not None and beta is not None and acme.pk != beta.pk
    assert (acme.account, json.loads(acme.params)) == ("acme", {"of": "acme"})
    assert await db.get_instance("acme", WF, "only-beta") is None
    assert await db.count_by_status("acme", WF) == {"queued": 1}
    assert [r.id for r in (await db.list_instances("acme", WF)).items] == ["same"]
    # no operation of acme's reaches beta's instance
    for attempt in (
        db.pause("acme", WF, "only-beta", now=T0),
        db.resume("acme", WF, "only-beta", now=T0),
        db.terminate("acme", WF, "only-beta", now=T0, retention_ms=1000),
        db.restart("acme", WF, "only-beta", now=T0, from_step=None),
        db.send_event("acme", WF, "only-beta", event_type="go", payload="1", now=T0),
    ):
        with pytest.raises(InstanceNotFoundError):
            await attempt
    assert await db.delete_instances("acme", WF, ["only-beta"]) == []
    await db.send_event("acme", WF, "same", event_type="go", payload='"to acme"', now=T0 + 1)
    await db.terminate("acme", WF, "same", now=T0 + 2, retention_ms=1000)
    assert (await db.get_instance("beta", WF, "same")).status == "queued"  # type: ignore[union-attr]
    _, beta_events = await db.load_history(beta.pk)
    assert beta_events == []
    # deleting acme's workflow leaves beta's, and the worker claims across accounts
    assert await db.delete_workflow("acme", WF) is True
    assert (await db.get_instance("beta", WF, "same")) is not None
    claimed = await db.claim(owner="w", now=T0 + 3, lease_seconds=30, limit=10, workflows=[WF])
    assert sorted((c.instance.account, c.instance.id) for c in claimed.claims) == [
        ("beta", "only-beta"),
        ("beta", "same"),
    ]


async def test_a_concurrency_limit_holds_per_account(opener: Opener) -> None:
    db = await opener()
    limited = json.dumps({"concurrency": {"limit": 1}})
    await db.put_workflow(WorkflowRecord(WF, "C", "", "v1", T0, T0, None, limited, "acme"))
    await db.put_workflow(WorkflowRecord(WF, "C", "", "v1", T0, T0, None, "{}", "beta"))
    for account in ("acme", "beta"):
        rows = [NewInstance(WF, f"i{n}", "{}", T0, account=account) for n in range(3)]
        await db.create_instances(rows, skip_existing=False)
    result = await db.claim(owner="w", now=T0 + 1, lease_seconds=30, limit=10, workflows=[WF])
    by_account = sorted(c.instance.account for c in result.claims)
    assert by_account == ["acme", "beta", "beta", "beta"]  # acme's limit of 1 does not bind beta
