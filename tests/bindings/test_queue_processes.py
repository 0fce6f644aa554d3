"""Queue consumers as real processes: two share one queue (SQLite file or PostgreSQL) with every message
handled, retried and dead-lettered as configured; a consumer SIGKILLed mid-batch loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stepstone.bindings.queues import Queue
from stepstone.clock import SystemClock
from stepstone.storage import binding_store, storage_for_url

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []

    def start(url: str, record: Path, *extra: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = (tmp_path / f"worker-{len(procs)}.log").open("wb")
        logs.append(log)
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.bindings.queue_worker", url, str(record), *extra],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    for log in logs:
        log.close()


def lines(record: Path) -> list[str]:
    return record.read_text().splitlines() if record.exists() else []


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


async def depth(url: str, queue: str) -> int:
    storage = storage_for_url(url)
    await storage.open()
    try:
        return await binding_store(storage).queue_depth(queue)
    finally:
        await storage.close()


async def send(url: str, bodies: list[dict[str, object]]) -> None:
    storage = storage_for_url(url)
    await storage.open()
    try:
        queue = Queue(binding_store(storage), "jobs", SystemClock())
        for start in range(0, len(bodies), 100):
            await queue.sendBatch([{"body": b} for b in bodies[start : start + 100]])
    finally:
        await storage.close()


def test_two_workers_share_a_queue(url: str, tmp_path: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    record = tmp_path / "record.txt"
    _sync_depth(url, "jobs")  # create the tables before the workers race to
    workers = [spawn(url, record), spawn(url, record)]
    wait_for(lambda: sum(line.startswith("ready") for line in lines(record)) == 2, "both workers ready")
    bodies: list[dict[str, object]] = []
    for n in range(300):
        fail = "always" if n % 10 == 0 else "once" if n % 7 == 0 else None
        bodies.append({"n": n, "fail": fail} if fail else {"n": n})
    asyncio.run(send(url, bodies))
    always = {n for n in range(300) if n % 10 == 0}
    once = {n for n in range(300) if n % 7 == 0} - always

    def delivered() -> Counter[int]:
        return Counter(int(line.split()[0]) for line in lines(record) if not line.startswith(("ready", "hang")))

    # every poison message delivered 3 times (1 + max_retries 2), every "once" twice, the rest once
    expected = Counter({n: 3 if n in always else 2 if n in once else 1 for n in range(300)})
    wait_for(lambda: _sync_depth(url, "jobs") == 0 and _sync_depth(url, "jobs-dlq") == len(always), "the queue drained")
    for proc in workers:
        assert proc.poll() is None, "a worker died"
    got = delivered()
    assert set(got) == set(range(300))  # none lost
    assert got == expected  # retried as configured (no crash here, so no redelivery either)
    pids = {line.split()[2] for line in lines(record) if not line.startswith(("ready", "hang"))}
    assert len(pids) == 2, "both workers consumed"


def _sync_depth(url: str, queue: str) -> int:
    return asyncio.run(depth(url, queue))


def test_a_consumer_killed_mid_batch_loses_nothing(url: str, tmp_path: Path, spawn) -> None:  # type: ignore[no-untyped-def]
    record = tmp_path / "record.txt"
    _sync_depth(url, "jobs")
    first = spawn(url, record, "--hang", "3", "--lease", "2")
    wait_for(lambda: any(line.startswith("ready") for line in lines(record)), "the first worker ready")
    asyncio.run(send(url, [{"n": n} for n in range(10)]))
    wait_for(lambda: "hang" in lines(record), "the handler to block mid-batch")
    before = [line for line in lines(record) if line[0].isdigit()]
    assert [line.split()[:2] for line in before] == [[str(n), "1"] for n in range(4)]  # 0..3 handled, 3 blocks
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    assert _sync_depth(url, "jobs") == 10  # nothing acked: the batch is still there, leased to a dead process
    spawn(url, record, "--lease", "2")
    wait_for(lambda: _sync_depth(url, "jobs") == 0, "the second worker to finish the batch")
    after = [line.split() for line in lines(record) if line[0].isdigit()][len(before) :]
    assert sorted(int(n) for n, _, _ in after) == list(range(10))  # every message came back...
    assert {attempts for _, attempts, _ in after} == {"2"}  # ...as a second attempt
