"""Crash tests for ``step.run_workflow``: the worker subprocess is SIGKILLed while a child runs, right after a
child finished, and at random moments; on SQLite and PostgreSQL.

Afterwards every parent completes with the output of an uninterrupted run, each child was created once (two per
parent, each linked to it), each parent recorded each child's result once and consumed its wake-up event, and no
step of parent or child ran again after its result was recorded.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
from pathlib import Path

import pytest

from stepstone import Engine
from stepstone.binding import Workflow
from stepstone.testing import wait_for_status
from tests.crash.child_worker import Family, Kid, expected
from tests.crash.harness import backend_url, kill, logged, until
from tests.crash.harness import start_worker as harness_start_worker


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return backend_url(request, tmp_path, "children.db")


def start_worker(url: str, log: Path, gates: Path | None = None) -> subprocess.Popen[bytes]:
    return harness_start_worker("child_worker", url, log, gates)


async def check_once(client: Engine, log: Path, parents: list[int]) -> None:
    family, kid = client.workflow("family"), client.workflow("kid")
    ended: dict[tuple[str, str], float] = {}
    for n in parents:
        parent = await family.get(f"f{n}")
        status = await wait_for_status(parent, "complete", timeout=120)
        assert status.output == expected(n)
        steps = await parent.history()
        waits = [s for s in steps if s.kind == "wait"]
        assert [(s.name, s.count, s.status) for s in waits] == [("kid", 1, "success"), ("kid", 2, "success")]
        assert len(steps) == 4, [s.key for s in steps]  # before, two children, after: one record each
        _, unconsumed = await client.storage.load_history((await parent.record()).pk)
        assert unconsumed == []  # each child's wake-up event was consumed, once
        doc = await parent.describe()
        assert [c["id"] for c in doc["children"]] == [f"f{n}-kid-1", f"f{n}-kid-2"]
        for s in steps:
            if s.kind == "do" and s.ended_at is not None:
                ended[(f"f{n}", s.name)] = s.ended_at
        for c in (1, 2):
            child = await kid.get(f"f{n}-kid-{c}")
            assert (await child.describe())["parent"]["id"] == f"f{n}"
            for s in await child.history():
                assert s.status == "success" and s.ended_at is not None
                ended[(child.id, s.name)] = s.ended_at
    page = await kid.list_instances(limit=1000)
    assert page.total == 2 * len(parents)  # each child created once
    reruns = []
    for line in log.read_text().splitlines():
        started, _pid, inst_id, key = line.split()
        if (inst_id, key) in ended and float(started) > ended[(inst_id, key)]:
            reruns.append(line)
    assert not reruns, f"recorded steps ran again: {reruns[:5]}"


async def _client(url: str) -> tuple[Engine, Workflow]:
    client = Engine(url, worker=False)
    client.register(Kid, name="kid")
    wf = client.register(Family, name="family")
    await client.start()
    return client, wf


@pytest.mark.slow
async def test_sigkill_while_the_child_runs_and_right_after_it_finished(url: str, tmp_path: Path) -> None:
    log, gates = tmp_path / "executions.log", tmp_path / "gates"
    gates.mkdir()
    client, family = await _client(url)
    try:
        await family.create(id="f0", params={"n": 0})
        proc = start_worker(url, log, gates)
        await until("the first child runs its step", lambda: logged(log, "f0-kid-1", "work"))
        kill(proc)  # while the child runs
        proc = start_worker(url, log, gates)
        (gates / "f0-kid-1").touch()
        kid = client.workflow("kid")

        async def first_done() -> bool:
            return (await (await kid.get("f0-kid-1")).status()).status == "complete"

        await until("the first child completes", first_done)
        kill(proc)  # right after the child finished (the parent may or may not have run)
        proc = start_worker(url, log, gates)
        await until("the second child runs its step", lambda: logged(log, "f0-kid-2", "work"))
        (gates / "f0-kid-2").touch()
        try:
            await check_once(client, log, [0])
        finally:
            kill(proc)
    finally:
        await client.stop()


@pytest.mark.slow
async def test_sigkill_at_random_moments_creates_each_child_once(url: str, tmp_path: Path) -> None:
    log = tmp_path / "executions.log"
    rng = random.Random(12)
    client, family = await _client(url)
    parents = list(range(12))
    try:
        await family.create_batch({"instances": [{"id": f"f{n}", "params": {"n": n}} for n in parents]})
        for _ in range(5):
            proc = start_worker(url, log)
            await asyncio.sleep(rng.uniform(0.6, 1.2))
            kill(proc)
        proc = start_worker(url, log)
        try:
            await check_once(client, log, parents)
        finally:
            kill(proc)
    finally:
        await client.stop()
