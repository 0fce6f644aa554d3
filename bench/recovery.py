"""Phase 7: kill a worker process mid-instance, start a new one, time until the interrupted step runs again.

The orchestrator (:func:`run_trials`, inside the phase process) starts worker A
(``python -m bench.recovery <engine> <url> first <id> <dir>``), which creates instance ``<id>``: five no-op
steps, then (in the workflow body, between steps) A writes a marker and blocks. Once the marker exists A is
SIGKILLed. Then worker B starts (role ``second``): it replays the five steps from history, its next step
``resume`` writes the wall time it started, the last step writes ``done``, and B exits.

The kill lands between steps on purpose: a kill during a step's attempt makes that attempt count as failed
(Cloudflare's semantics), so stepstone re-runs it only after the step's retry delay (10 s by default), which
would measure the retry policy rather than recovery.

Recovery = (B's ``resume`` step start) − (the moment B was spawned); B also reports when its engine finished
starting so the interpreter and import time can be told apart.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import summary_ms


def _marker(d: str, name: str, value: float | None = None) -> None:
    p = Path(d) / name
    p.write_text(repr(time.time() if value is None else value))


async def _wait_file(p: Path, timeout: float, proc: asyncio.subprocess.Process | None = None) -> float:
    deadline = time.monotonic() + timeout
    while not p.exists() or not p.read_text():
        if proc is not None and proc.returncode is not None:
            raise RuntimeError(f"worker exited with {proc.returncode} before {p.name}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {p.name} after {timeout}s")
        await asyncio.sleep(0.002)
    return float(p.read_text())


async def run_trials(engine: str, url: str, trials: int) -> dict[str, Any]:
    totals, after_ready, startup = [], [], []
    for trial in range(trials):
        iid = f"victim-{trial}"
        d = tempfile.mkdtemp(prefix="p7-")
        a = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.recovery", engine, url, "first", iid, d)
        try:
            await _wait_file(Path(d) / "A_in_slow", 120, a)
            await asyncio.sleep(0.2)
        finally:
            a.send_signal(signal.SIGKILL)
            await a.wait()
        t_spawn = time.time()
        b = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.recovery", engine, url, "second", iid, d)
        try:
            t_step = await _wait_file(Path(d) / "B_slow", 120, b)
            t_ready = await _wait_file(Path(d) / "B_ready", 10, b)
            await asyncio.wait_for(b.wait(), 120)
        finally:
            if b.returncode is None:
                b.kill()
                await b.wait()
        totals.append(t_step - t_spawn)
        after_ready.append(max(0.0, t_step - t_ready))
        startup.append(t_ready - t_spawn)
    return {
        "trials": trials,
        "restart_to_first_step": summary_ms(totals),
        "engine_ready_to_first_step": summary_ms(after_ready),
        "process_start_to_engine_ready": summary_ms(startup),
    }


# -- the worker processes ------------------------------------------------------------------------------------
ROLE = ""
DIR = ""


async def _noop() -> None:
    return None


async def _block_in_first() -> None:
    if ROLE == "first":
        _marker(DIR, "A_in_slow")
        await asyncio.sleep(3600)


async def _slow() -> None:
    if ROLE != "first" and not (Path(DIR) / "B_slow").exists():
        _marker(DIR, "B_slow")


async def _done() -> None:
    _marker(DIR, "done")


async def _stepstone_worker(url: str, iid: str) -> None:
    from stepstone import Engine, WorkflowEntrypoint

    class Victim(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> None:
            for i in range(5):
                await step.do(f"s{i}", _noop)
            await _block_in_first()
            await step.do("resume", _slow)
            await step.do("last", _done)

    async with Engine(url, concurrency=500) as engine:
        wf = engine.register(Victim, name="p7")
        if ROLE == "first":
            await wf.create(id=iid)
        else:
            _marker(DIR, "B_ready")
        await _wait_file(Path(DIR) / "done", 3600 if ROLE == "first" else 300)


async def _dbos_worker(url: str, iid: str) -> None:
    from dbos import DBOS, SetWorkflowID

    @DBOS.step()
    async def noop() -> None:
        return None

    @DBOS.step()
    async def slow() -> None:
        await _slow()

    @DBOS.step()
    async def done() -> None:
        await _done()

    @DBOS.workflow()
    async def victim() -> None:
        for _ in range(5):
            await noop()
        await _block_in_first()
        await slow()
        await done()

    DBOS(config={"name": "bench", "system_database_url": url, "log_level": "WARNING"})
    DBOS.launch()
    try:
        if ROLE == "first":
            with SetWorkflowID(iid):
                await DBOS.start_workflow_async(victim)
        else:
            _marker(DIR, "B_ready")
        await _wait_file(Path(DIR) / "done", 3600 if ROLE == "first" else 300)
    finally:
        DBOS.destroy()


def main() -> None:
    global ROLE, DIR
    engine, url, ROLE, iid, DIR = sys.argv[1:6]
    if engine == "stepstone":
        asyncio.run(_stepstone_worker(url, iid))
    else:
        asyncio.run(_dbos_worker(url, iid))
    os._exit(0)


if __name__ == "__main__":
    main()
