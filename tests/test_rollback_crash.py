"""Crash tests for saga rollbacks: the worker subprocess is SIGKILLed in the middle of a rollback (a handler
running, others recorded), and at random moments, on SQLite and PostgreSQL; for a rollback after a failure
(``step.rollback_all``) and for ``terminate(rollback=True)``.

Afterwards every instance ended as an uninterrupted run would (errored, or terminated), every handler is recorded
once as done, in last-in first-out order, and no step or handler ran again after it was recorded as done.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
from pathlib import Path

import pytest

from stepstone import Engine
from stepstone.binding import Workflow
from stepstone.testing import wait_for_event_wait, wait_for_status
from tests.crash.harness import backend_url, kill, logged, until
from tests.crash.harness import start_worker as harness_start_worker
from tests.crash.rollback_worker import STEPS, Saga


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request, tmp_path, "sagas.db")


def start_worker(url: str, log: Path, gates: Path | None = None) -> subprocess.Popen[bytes]:
    return harness_start_worker("rollback_worker", url, log, gates)


async def _client(url: str) -> tuple[Engine, Workflow]:
    client = Engine(url, worker=False)
    wf = client.register(Saga, name="saga")
    await client.start()
    return client, wf


async def check_rolled_back(saga: Workflow, log: Path, ids: list[str], final: str) -> None:
    ended: dict[tuple[str, str], float] = {}
    for instance_id in ids:
        inst = await saga.get(instance_id)
        status = await wait_for_status(inst, final, timeout=120)
        if final == "errored":
            assert status.error is not None and status.error.message == "out of stock"
        steps = await inst.history()
        undo = sorted((s for s in steps if s.kind == "rollback"), key=lambda s: s.seq)
        # each handler recorded once as done, last-in first-out
        assert [(s.name, s.status) for s in undo] == [(f"s{n}", "success") for n in reversed(range(STEPS))]
        assert [s.result for s in undo] == [f'"undid v{n}"' for n in reversed(range(STEPS))]
        doc = await inst.describe()
        assert doc["rollback"] == {"outcome": "complete", "error": None}
        for s in steps:
            assert s.ended_at is not None or s.kind == "wait", s.key
            if s.ended_at is not None and s.kind in ("do", "rollback"):
                ended[(instance_id, ("undo-" if s.kind == "rollback" else "do-") + s.name)] = s.ended_at
        events = [e["type"] async for e in inst.subscribe()]
        assert events.count("rollback_started") == 1 and events.count("rollback_completed") == 1
        assert events.count("rollback_step_completed") == STEPS
    reruns = []
    for line in log.read_text().splitlines():
        started, _pid, instance_id, key = line.split()
        if (instance_id, key) in ended and float(started) > ended[(instance_id, key)]:
            reruns.append(line)
    assert not reruns, f"recorded steps or handlers ran again: {reruns[:5]}"


@pytest.mark.slow
@pytest.mark.parametrize("how", ["rollback_all", "terminate"])
async def test_sigkill_in_the_middle_of_a_rollback(url: str, tmp_path: Path, how: str) -> None:
    log, gates = tmp_path / "executions.log", tmp_path / "gates"
    gates.mkdir()
    client, saga = await _client(url)
    try:
        inst = await saga.create(id="k1", params={"fail": how == "rollback_all"})
        proc = start_worker(url, log, gates)
        if how == "terminate":
            await wait_for_event_wait(inst, "go", timeout=60)
            await inst.terminate(rollback=True)
        await until("the rollback reaches s2's handler", lambda: logged(log, "k1", "undo-s2"))
        steps = await inst.history()
        assert [(s.name, s.status) for s in steps if s.kind == "rollback" and s.status == "success"] == [
            ("s4", "success"),
            ("s3", "success"),
        ]
        kill(proc)  # s4's and s3's handlers recorded, s2's running
        proc = start_worker(url, log, gates)
        await until("s2's handler runs again (it was not recorded)", lambda: _count(log, "k1", "undo-s2") >= 2)
        (gates / "k1").touch()
        try:
            await check_rolled_back(saga, log, ["k1"], "errored" if how == "rollback_all" else "terminated")
        finally:
            kill(proc)
        assert _count(log, "k1", "undo-s4") == 1 and _count(log, "k1", "undo-s3") == 1
    finally:
        await client.stop()


@pytest.mark.slow
async def test_sigkill_at_random_moments_of_rollbacks(url: str, tmp_path: Path) -> None:
    log = tmp_path / "executions.log"
    rng = random.Random(7)
    client, saga = await _client(url)
    failing = [f"f{n}" for n in range(8)]
    waiting = [f"w{n}" for n in range(4)]
    try:
        await saga.create_batch({"instances": [{"id": i, "params": {"fail": True}} for i in failing]})
        await saga.create_batch({"instances": [{"id": i, "params": {}} for i in waiting]})
        proc = start_worker(url, log)
        for i in waiting:
            await wait_for_event_wait(await saga.get(i), "go", timeout=60)
        for i in waiting:
            await (await saga.get(i)).terminate(rollback=True)
        for _ in range(4):
            await asyncio.sleep(rng.uniform(0.2, 0.6))
            kill(proc)
            proc = start_worker(url, log)
        try:
            await check_rolled_back(saga, log, failing, "errored")
            await check_rolled_back(saga, log, waiting, "terminated")
        finally:
            kill(proc)
    finally:
        await client.stop()


def _count(log: Path, instance_id: str, key: str) -> int:
    return sum(1 for line in log.read_text().splitlines() if line.split()[2:] == [instance_id, key])
