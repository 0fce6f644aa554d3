"""A worker killed with SIGKILL in the middle of streaming a step output, on SQLite and PostgreSQL: the partial
blob is never counted or served, the step re-runs and records a whole one, and the sweep at start removes the
leftover (SQLite: a row and a temporary file; PostgreSQL: nothing, the transaction never committed)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from stepstone import ByteStream, Engine, codec
from stepstone.testing import wait_for_status
from tests.blob_workflows import MIB, PATTERN, SlowOut, expected_sha256
from tests.test_blobs_http import stored_blobs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'blobs.db'}"
    return str(request.getfixturevalue("postgres_url"))


def start_worker(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.blob_worker", url], cwd=ROOT)


async def wait_for_lines(log: Path, n: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while not log.exists() or len(log.read_text().splitlines()) < n:
        assert proc.poll() is None, "the worker exited"
        assert time.monotonic() < deadline, "the producer did not get that far"
        await asyncio.sleep(0.02)


async def test_sigkill_mid_write_leaves_no_orphan_counted_or_served(url: str, tmp_path: Path) -> None:
    log, release = tmp_path / "chunks.log", tmp_path / "release"
    async with Engine(url, worker=False) as client:
        wf = client.register(SlowOut, name="slowout")
        inst = await wf.create(id="slow", params={"log": str(log), "release": str(release)})
        proc = start_worker(url)
        try:
            await wait_for_lines(log, 3, proc)  # 3 MiB written; the producer now waits for the release file
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            # nothing recorded (the attempt's start marker, at most), so nothing to count or serve
            assert all(s.result is None for s in await inst.history() if s.name == "produce")
            leftover = stored_blobs(url, tmp_path)
            if url.startswith("sqlite"):
                assert leftover == (1, 3 * MIB)  # the 'writing' row and its temporary file
            else:
                assert leftover == (0, 0)  # one transaction: it never committed
            release.touch()
            proc = start_worker(url)  # takes the instance over when the dead worker's lease runs out
            status = await wait_for_status(inst, "complete", timeout=120)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert status.output == {"size": 8 * MIB, "sha256": expected_sha256(8)}
        step = next(s for s in await inst.history() if s.name == "produce")
        assert step.status == "success"
        stream = await inst.output_stream(codec.decode(step.result or ""))
        assert isinstance(stream, ByteStream) and stream.size == 8 * MIB
        # the sweep at start spares what is younger than its grace (a write may still be running elsewhere);
        # with no grace it removes the leftover and keeps the recorded blob
        removed = await client.storage.blobs.sweep(now=time.time(), grace_s=0)
        assert removed == (1 if url.startswith("sqlite") else 0)
        assert stored_blobs(url, tmp_path) == (1, 8 * MIB)
        assert await stream.read() == PATTERN * 8
