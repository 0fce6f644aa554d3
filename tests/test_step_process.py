"""isolation="process": sync steps run in child processes; a timed-out attempt's process is killed."""

from __future__ import annotations

import functools
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stepstone import Engine, InstanceError, NonRetryableError, ValidationError, WorkflowEntrypoint
from stepstone.config import ConfigError, load_config
from stepstone.project import Project
from stepstone.testing import wait_for_status

ONE_TRY_A_SECOND = {"retries": {"limit": 1, "delay": 0}, "timeout": "1 second"}


def note(path: str, line: str) -> None:
    with open(path, "a") as f:
        f.write(line + "\n")


def busy(path: str, ctx: Any) -> str:
    """Attempt 1 spins for 3 s (past its 1 s timeout), then would leave a mark; attempt 2 returns at once."""
    note(path, f"start {ctx.attempt} {os.getpid()}")
    if ctx.attempt == 1:
        end = time.monotonic() + 3.0
        while time.monotonic() < end:  # a busy loop: no sleep, no I/O, nothing a thread could be stopped at
            pass
        note(path, "after the timeout")
    return f"ok on attempt {ctx.attempt} in {os.getpid()}"


class Busy(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("busy", ONE_TRY_A_SECOND, functools.partial(busy, event.payload["path"]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_timed_out_sync_step_is_killed_and_its_retry_starts_clean(db_url: str, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    async with Engine(db_url) as engine:
        wf = engine.register(Busy, name="busy", isolation="process")
        inst = await wf.create(params={"path": str(marks)})
        status = await wait_for_status(inst, "complete", timeout=60)
        tries = (await inst.describe())["steps"][0]["attempts"]
    first, second = (line.split() for line in marks.read_text().splitlines())
    assert first[:2] == ["start", "1"] and second[:2] == ["start", "2"]
    killed = int(first[2])
    assert killed != os.getpid() and killed != int(second[2])  # each attempt in a process of its own
    assert status.output == f"ok on attempt 2 in {second[2]}"
    assert [t["success"] for t in tries] == [False, True]
    assert tries[0]["error"] == {"name": "WorkflowTimeoutError", "message": "Execution timed out after 1000ms"}
    # The first attempt's process is gone, so its side effect after the timeout can never happen (under
    # isolation="thread" it would: the call runs on in its thread, and the retry waits for it).
    assert not _alive(killed)
    assert "after the timeout" not in marks.read_text()


def shapes(ctx: Any, earlier: Any) -> dict[str, Any]:
    """Values that cross the boundary through the codec: ctx, a declared step's result, bytes and datetimes."""
    return {"attempt": ctx["attempt"], "step": ctx.step, "earlier": earlier, "pid": os.getpid()}


def earlier() -> dict[str, Any]:
    return {"raw": b"\x00\xffbytes", "at": datetime(2026, 12, 3, 12, 0, tzinfo=UTC)}


class Shapes(WorkflowEntrypoint):
    """Cloudflare's decorator form over module-level functions: ``shapes`` gets ``earlier``'s result."""

    async def run(self, event: Any, step: Any) -> Any:
        first = step.do("earlier")(earlier)
        second = step.do("shapes")(shapes)
        return {"first": await first(), "second": await second()}


async def test_arguments_and_results_cross_through_the_codec(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Shapes, name="shapes", isolation="process").create()
        status = await wait_for_status(inst, "complete", timeout=60)
    value = earlier()
    assert status.output["first"] == value
    second = status.output["second"]
    assert second["attempt"] == 1 and second["step"] == {"name": "shapes", "count": 1}
    assert second["earlier"] == value and second["pid"] != os.getpid()


class Lambda(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("inline", lambda: 1)


async def test_a_lambda_cannot_cross_and_says_why(db_url: str) -> None:
    async with Engine(db_url) as engine:
        inst = await engine.register(Lambda, name="lambda", isolation="process").create()
        status = await wait_for_status(inst, "errored", timeout=60)
        tries = (await inst.describe())["steps"][0]["attempts"]
    assert status.error is not None and status.error.name == "ValidationError"
    assert status.error.message.startswith('step "inline-1": isolation="process" runs sync steps in a process')
    assert "not a lambda, a nested function or a closure" in status.error.message
    assert len(tries) == 1  # not retried: it would fail the same way


class Picky(Exception):
    """A user exception, rebuilt in the worker from its class and message."""


def refuse(kind: str) -> None:
    if kind == "final":
        raise NonRetryableError("no thanks", "Refused")
    raise Picky(f"picky about {kind}")


class Raises(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        kind = event.payload["kind"]
        try:
            await step.do("refuse", {"retries": {"limit": 0, "delay": 0}}, functools.partial(refuse, kind))
        except Picky as exc:
            return f"caught {type(exc).__name__}: {exc}"


async def test_errors_come_back_as_their_class(db_url: str) -> None:
    async with Engine(db_url) as engine:
        wf = engine.register(Raises, name="raises", isolation="process")
        final = await wf.create(params={"kind": "final"})
        status = await wait_for_status(final, "errored", timeout=60)
        assert status.error == InstanceError("Refused", "no thanks")
        picky = await wf.create(params={"kind": "x"})
        assert (await wait_for_status(picky, "complete", timeout=60)).output == "caught Picky: picky about x"
        tries = (await picky.describe())["steps"][0]["attempts"]
    assert "raised in the step's process" in tries[0]["error"]["traceback"]


def spin(seconds: float) -> str:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass
    return "spun"


class Spin(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("spin", {"retries": {"limit": 0, "delay": 0}}, functools.partial(spin, 2.0))


async def test_cpu_ms_counts_the_step_process_cpu_time(db_url: str) -> None:
    async with Engine(db_url) as engine:
        wf = engine.register(Spin, name="spin", limits={"cpu_ms": 200}, isolation="process")
        status = await wait_for_status(await wf.create(), "errored", timeout=60)
    assert status.error == InstanceError("CPUTimeLimitError", "Worker exceeded CPU time limit.")


async def test_isolation_must_be_thread_or_process(db_url: str) -> None:
    async with Engine(db_url, worker=False) as engine:
        with pytest.raises(ValidationError, match=r"workflow 'x': isolation must be \"thread\" or \"process\""):
            engine.register(Busy, name="x", isolation="fork")


PROJECT = """
name = "p"
main = "main.py"

[[workflows]]
name = "busy"
binding = "BUSY"
class_name = "Busy"
isolation = "process"
"""

MAIN = """
import os
from stepstone import WorkflowEntrypoint


def where():
    return os.getpid()


class Busy(WorkflowEntrypoint):
    async def run(self, event, step):
        return await step.do("where", where)
"""


async def test_isolation_from_the_project_file(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(MAIN)
    path = tmp_path / "stepstone.toml"
    path.write_text(PROJECT)
    assert [wf.isolation for wf in load_config(path, environ={}).workflows] == ["process"]
    project = Project.load(path)
    async with project.engine(worker=True, database=f"sqlite:///{tmp_path / 'p.db'}") as engine:
        inst = await engine.workflow("busy").create()
        status = await wait_for_status(inst, "complete", timeout=60)
    assert isinstance(status.output, int) and status.output != os.getpid()  # main.py imported from its file
    path.write_text(PROJECT.replace('isolation = "process"', 'isolation = "fork"'))
    with pytest.raises(ConfigError, match=r"workflows\[0\]\.isolation: expected \"thread\" or \"process\""):
        load_config(path, environ={})
