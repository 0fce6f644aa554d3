"""Crash tests: a worker subprocess is killed with SIGKILL at random moments, then restarted.

After the last restart every instance completes with the output of an uninterrupted run, no completed step runs
again (no execution of a step starts after its result was recorded), and no step has two recorded results.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from stepstone import Engine
from stepstone.testing import wait_for_status
from tests.crash.worker import Crashy, expected_total

ROOT = Path(__file__).resolve().parent.parent
INSTANCES = 24


def start_worker(url: str, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.crash.worker", url, str(log)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.slow
async def test_sigkill_at_random_moments_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "crash.db"
    url = f"sqlite:///{db}"
    log = tmp_path / "executions.log"
    rng = random.Random(7)
    async with Engine(url, worker=False) as client:
        wf = client.register(Crashy, name="crashy")
        await wf.create_batch({"instances": [{"id": f"i{n}", "params": {"n": n}} for n in range(INSTANCES)]})
        kills = 0
        for _ in range(6):
            proc = start_worker(url, log)
            await asyncio.sleep(rng.uniform(0.5, 0.9))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        proc = start_worker(url, log)
        try:
            for n in range(INSTANCES):
                status = await wait_for_status(await wf.get(f"i{n}"), "complete", timeout=120)
                assert status.output == {"n": n, "total": expected_total(n)}
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert kills == 6

    conn = sqlite3.connect(db)
    ended = {
        (inst_id, name.replace(" ", "-")): end
        for inst_id, name, end in conn.execute(
            "SELECT i.id, s.name, s.ended_at FROM steps s JOIN instances i ON i.pk = s.instance_pk WHERE s.kind = 'do'"
        )
    }
    counts = dict(
        conn.execute("SELECT i.id, COUNT(*) FROM steps s JOIN instances i ON i.pk = s.instance_pk GROUP BY i.id")
    )
    assert all(c == 6 + 4 + 1 + 4 for c in counts.values()), counts  # one recorded result per step
    reruns = []
    executions = 0
    for line in log.read_text().splitlines():
        started, _pid, inst_id, key = line.split()
        executions += 1
        end = ended[(inst_id, key)]
        if float(started) > end:
            reruns.append(line)
    assert not reruns, f"completed steps ran again: {reruns[:5]}"
    assert executions >= INSTANCES * 14
    print(f"{executions} step executions for {INSTANCES * 14} steps across 6 SIGKILLs")
