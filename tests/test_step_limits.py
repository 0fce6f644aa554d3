"""Step timeouts and limits that hold whatever the step does: hung sync steps, blocking async steps, CPU."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stepstone import Engine, InstanceError, WorkflowEntrypoint
from stepstone.config import ConfigError, load_config
from stepstone.testing import wait_for_status

RELEASE = threading.Event()
"""Hung steps wait on this; set at the end of each test so their threads end."""
RECORDS: list[tuple[int, float, float]] = []
NO_RETRY = {"retries": {"limit": 0, "delay": 0}}


@pytest.fixture(autouse=True)
def _release() -> Iterator[None]:
    RELEASE.clear()
    RECORDS.clear()
    yield
    RELEASE.set()


def attempts(details: dict[str, Any], index: int = 0) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = details["steps"][index]["attempts"]
    return result


class Hang(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("hang", {**NO_RETRY, "timeout": 300}, lambda: RELEASE.wait(60))


class One(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("one", {"timeout": "5 seconds"}, lambda: 1)


async def test_eight_hung_sync_steps_do_not_make_other_instances_time_out(db_url: str) -> None:
    # 4 threads (the worker's concurrency); 8 sync steps hang in them for good, each past its timeout.
    async with Engine(db_url, concurrency=4) as engine:
        hang = engine.register(Hang, name="hang")
        one = engine.register(One, name="one")
        hung = [await hang.create(id=f"h{i}") for i in range(8)]
        for inst in hung:
            status = await wait_for_status(inst, "errored", timeout=30)
            assert status.error == InstanceError("WorkflowTimeoutError", "Execution timed out after 300ms")
        assert engine.worker is not None and engine.worker.threads.abandoned == 8  # all eight still hang
        others = [await one.create(id=f"o{i}") for i in range(20)]
        for inst in others:
            assert (await wait_for_status(inst, "complete", timeout=30)).output == 1


class Queued(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        def work(n: int) -> int:
            time.sleep(1.2)
            return n

        config = {**NO_RETRY, "timeout": "3 seconds"}
        return await asyncio.gather(*(step.do(f"s{n}", config, lambda n=n: work(n)) for n in range(3)))


async def test_a_step_timeout_does_not_count_while_it_waits_for_a_thread(db_url: str) -> None:
    # One thread: the third step waits 2.4 s for it, then runs 1.2 s, within its 3 s timeout.
    async with Engine(db_url, concurrency=1) as engine:
        inst = await engine.register(Queued, name="queued").create()
        assert (await wait_for_status(inst, "complete", timeout=30)).output == [0, 1, 2]


class BlockingAsync(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def sleepy() -> str:
            time.sleep(1.5)  # blocks the event loop past the 1 s timeout
            return "done"

        return await step.do("sleepy", {"retries": {"limit": 1, "delay": 0}, "timeout": "1 second"}, sleepy)


async def test_an_async_step_blocking_past_its_timeout_times_out(db_url: str) -> None:
    async with Engine(db_url, loop_block_limit=60) as engine:  # the timeout alone, no watchdog verdict
        inst = await engine.register(BlockingAsync, name="blocking").create()
        status = await wait_for_status(inst, "errored", timeout=30)
        assert status.error == InstanceError("WorkflowTimeoutError", "Execution timed out after 1000ms")
        tries = attempts(await inst.describe())
        assert [a["success"] for a in tries] == [False, False]  # the retry ran, then the step failed


class Blocky(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def blocky(ctx: Any) -> str:
            if ctx.attempt < 3:
                time.sleep(1.0)
            return f"ok on attempt {ctx.attempt}"

        return await step.do("blocky", {"retries": {"limit": 5, "delay": 0}}, blocky)


async def test_a_blocked_loop_fails_the_attempt_and_names_the_step(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="stepstone.worker")
    async with Engine(db_url, loop_block_limit=0.3) as engine:
        inst = await engine.register(Blocky, name="blocky").create(id="b1")
        assert (await wait_for_status(inst, "complete", timeout=30)).output == "ok on attempt 3"
        tries = attempts(await inst.describe())
        assert [a["success"] for a in tries] == [False, False, True]
        for failed in tries[:2]:
            assert failed["error"]["name"] == "EventLoopBlockedError"
            assert failed["error"]["message"].startswith('step "blocky-1" blocked the event loop for ')
            assert "make it a def step" in failed["error"]["message"]
    culprits = [r.getMessage() for r in caplog.records if "blocks it" in r.getMessage()]
    assert len(culprits) == 2 and all("step 'blocky-1' of instance blocky/b1" in m for m in culprits)


class Overlap(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        def work(ctx: Any) -> int:
            start = time.monotonic()
            if ctx.attempt == 1:
                time.sleep(1.0)  # far past the timeout; the thread cannot be stopped
            RECORDS.append((ctx.attempt, start, time.monotonic()))
            return int(ctx.attempt)

        return await step.do("work", {"retries": {"limit": 2, "delay": 0}, "timeout": 200}, work)


async def test_a_retry_never_overlaps_an_attempt_still_running_in_its_thread(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Overlap, name="overlap").create()
        assert (await wait_for_status(inst, "complete", timeout=30)).output == 2
        tries = attempts(await inst.describe())
        assert [a["success"] for a in tries] == [False, True]
        assert tries[0]["error"]["name"] == "WorkflowTimeoutError"
    (first, _, first_end), (second, second_start, _) = RECORDS
    assert (first, second) == (1, 2)
    assert second_start >= first_end  # the retry began only after the timed-out call returned


def burn(seconds: float) -> None:
    start = time.thread_time()
    while time.thread_time() - start < seconds:
        pass


class Cpu(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        if event.payload["burn"]:
            return await step.do("burn", NO_RETRY, lambda: burn(0.6))
        return await step.do("idle", NO_RETRY, lambda: time.sleep(0.6) or "slept")


async def test_cpu_ms_bounds_a_sync_step_by_its_thread_cpu_time(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="stepstone.engine")
    async with Engine(db_url) as engine:
        wf = engine.register(Cpu, name="cpu", limits={"cpu_ms": 150})
        notice = [r.getMessage() for r in caplog.records if "cpu_ms" in r.getMessage()]
        assert notice and "not enforced for async def steps" in notice[0]
        burner = await wf.create(params={"burn": True})
        status = await wait_for_status(burner, "errored", timeout=30)
        assert status.error == InstanceError("CPUTimeLimitError", "Worker exceeded CPU time limit.")
        sleeper = await wf.create(params={"burn": False})  # 600 ms of wall time, almost no CPU
        assert (await wait_for_status(sleeper, "complete", timeout=30)).output == "slept"


CPU_TOML = """
name = "p"
main = "main.py"
limits = { cpu_ms = 50000 }

[[workflows]]
name = "a"
binding = "A"
class_name = "A"

[[workflows]]
name = "b"
binding = "B"
class_name = "B"
limits = { cpu_ms = 1000, steps = 20 }
"""


def test_cpu_ms_from_the_project_file_top_level_and_per_workflow(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("")
    path = tmp_path / "stepstone.toml"
    path.write_text(CPU_TOML)
    config = load_config(path, environ={})
    assert [(wf.name, wf.cpu_ms) for wf in config.workflows] == [("a", 50000), ("b", 1000)]
    assert not config.warnings  # neither limits table is "ignored"
    path.write_text(CPU_TOML.replace("cpu_ms = 1000", "cpu_ms = 300001"))
    with pytest.raises(ConfigError, match=r"workflows\[1\]\.limits\.cpu_ms"):
        load_config(path, environ={})
