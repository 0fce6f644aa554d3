"""The event stream across a worker SIGKILL: a reader in another process follows the instance, stops when the
worker dies, and resumes with its cursor once a new worker takes over; it loses no event and sees none twice."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

from stepstone import Engine
from tests.crash.worker import Crashy, expected_total
from tests.test_crash import start_worker


async def test_reconnect_with_cursor_across_sigkill(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    log = tmp_path / "executions.log"
    async with Engine(url, worker=False) as client:
        wf = client.register(Crashy, name="crashy")
        inst = await wf.create(id="c1", params={"n": 3})
        seen: list[dict[str, Any]] = []
        proc = start_worker(url, log)
        try:
            # follow it live from this process until a few steps are done, then the worker dies mid-run
            async for ev in inst.subscribe():
                seen.append(ev)
                if sum(e["type"] == "step_completed" for e in seen) == 3:
                    break
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            cursor = seen[-1]["eventId"]
            proc = start_worker(url, log)  # takes the dead worker's instance over at once (same host)
            async with asyncio.timeout(60):
                async for ev in inst.subscribe(cursor=cursor):
                    seen.append(ev)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        assert seen[-1]["type"] == "workflow_completed"
        assert seen[-1]["output"] == {"n": 3, "total": expected_total(3)}
        ids = [e["eventId"] for e in seen]
        assert len(ids) == len(set(ids)) and ids == sorted(ids)  # nothing twice, in order
        assert seen == [ev async for ev in inst.subscribe()]  # nothing lost: the whole record, as it is
        completed = [e["stepName"] for e in seen if e["type"] == "step_completed"]
        assert sorted(completed) == sorted(
            [f"seq {i}" for i in range(6)] + [f"par {j}" for j in range(4)] + [f"tail {i}" for i in range(4)]
        )
        # the takeover shows: the instance ran again (a second workflow_running after the kill)
        assert sum(e["type"] == "workflow_running" for e in seen) >= 2
