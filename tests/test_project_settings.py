"""Project settings in stepstone.toml that ``stepstone dev`` and ``stepstone worker`` apply, with real subprocesses:
a workflow's ``concurrency`` and ``retention``, the worker's ``lease_seconds`` and ``--lease-seconds``; and a bad
value in any of them is an error naming the key and the file, from ``dev``, ``worker`` and ``serve`` alike."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepstone import Engine
from stepstone.models import DEFAULT_ACCOUNT
from stepstone.testing import wait_for_status

ROOT = Path(__file__).resolve().parent.parent

APP = """
import asyncio
from pathlib import Path

from stepstone import WorkflowEntrypoint

HERE = Path(__file__).parent


class Held(WorkflowEntrypoint):
    async def run(self, event, step):
        async def body():
            with open(HERE / "steps.log", "a") as log:
                log.write(f"start {event.instance_id}\\n")
            while not (HERE / "gate").exists():
                await asyncio.sleep(0.02)
            with open(HERE / "steps.log", "a") as log:
                log.write(f"end {event.instance_id}\\n")
            return event.instance_id

        return await step.do("body", body)
"""

CONFIG = """
name = "settings"
main = "app.py"

[[workflows]]
name = "one-at-a-time"
binding = "ONE"
class_name = "Held"
concurrency = 1
retention = {{ success = "5 minutes", error = "1 hour" }}

[[workflows]]
name = "plain"
binding = "PLAIN"
class_name = "Held"

[stepstone]
database = "sqlite:///project.db"
{extra}
"""


def environment() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("STEPSTONE_DATABASE_URL", "DATABASE_URL")}
    return {**clean, "PYTHONPATH": str(ROOT)}


def write_project(path: Path, extra: str = "", config: str = CONFIG) -> Path:
    (path / "app.py").write_text(APP)
    (path / "stepstone.toml").write_text(config.format(extra=extra))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, "lease_seconds = 600")


@pytest.fixture
def started(project: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(15)


def start(procs: list[subprocess.Popen[bytes]], cwd: Path, *args: str) -> Path:
    log = cwd / f"{args[0]}.log"
    with log.open("w") as out:
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "stepstone.cli", *args],
                cwd=cwd,
                env=environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        )
    return log


async def wait_for(predicate: object, what: str, timeout: float = 60) -> None:
    assert callable(predicate)
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def starts(project: Path) -> list[str]:
    log = project / "steps.log"
    return [line for line in log.read_text().splitlines() if line.startswith("start")] if log.exists() else []


async def test_workflow_concurrency_and_retention_and_the_lease_from_the_file(
    project: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    start(started, project, "worker")
    async with Engine(f"sqlite:///{project / 'project.db'}", worker=False) as client:
        one, plain = client.workflow("one-at-a-time"), client.workflow("plain")
        await wait_for_registered(client, "one-at-a-time")
        for n in range(3):
            await one.create(id=f"one-{n}")
        await plain.create(id="plain-0")
        await wait_for(lambda: len(starts(project)) == 2, "one instance of each workflow to start its step")
        await asyncio.sleep(1.0)  # room for a second instance of one-at-a-time to start if its limit did not hold
        held = [line.split()[1] for line in starts(project)]
        assert sorted(h.split("-")[0] for h in held) == ["one", "plain"], held
        queued = [(await (await one.get(f"one-{n}")).status()).status for n in range(3)]
        assert sorted(queued) == ["queued", "queued", "running"], queued
        # the lease the worker took is the file's lease_seconds (600 s), not the default 30 s
        record = await client.storage.get_instance(DEFAULT_ACCOUNT, "plain", "plain-0")
        assert record is not None and record.lease_expires_at is not None
        assert record.lease_expires_at - time.time() > 100
        (project / "gate").touch()
        for n in range(3):
            await wait_for_status(await one.get(f"one-{n}"), "complete", timeout=60)
        await wait_for_status(await plain.get("plain-0"), "complete", timeout=60)
        lines = (project / "steps.log").read_text().splitlines()
        ones = [line for line in lines if "one-" in line]
        for i in range(0, len(ones), 2):  # one at a time: each start is followed by its own end
            assert ones[i].replace("start", "end") == ones[i + 1], ones
        kept = {}
        for workflow, instance_id in (("one-at-a-time", "one-0"), ("plain", "plain-0")):
            rec = await client.storage.get_instance(DEFAULT_ACCOUNT, workflow, instance_id)
            assert rec is not None and rec.ended_on is not None and rec.expires_at is not None
            kept[workflow] = rec.expires_at - rec.ended_on
    assert kept["one-at-a-time"] == pytest.approx(300, abs=0.01)  # retention.success = "5 minutes"
    assert kept["plain"] == pytest.approx(7 * 86400, abs=0.01)  # the default


async def wait_for_registered(client: Engine, name: str) -> None:
    for _ in range(1200):
        if any(w.name == name for w in await client.list_workflows()):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"workflow {name} never registered")


@pytest.mark.parametrize(
    "command", [["worker", "--lease-seconds", "300"], ["dev", "--no-api", "--lease-seconds", "300"]]
)
async def test_lease_seconds_option_overrides_the_file(
    project: Path, started: list[subprocess.Popen[bytes]], command: list[str]
) -> None:
    start(started, project, *command)
    async with Engine(f"sqlite:///{project / 'project.db'}", worker=False) as client:
        await wait_for_registered(client, "plain")
        await client.workflow("plain").create(id="p")
        await wait_for(lambda: len(starts(project)) == 1, "the step to start")
        record = await client.storage.get_instance(DEFAULT_ACCOUNT, "plain", "p")
        assert record is not None and record.lease_expires_at is not None
        remaining = record.lease_expires_at - time.time()
        assert 100 < remaining <= 300  # the option's 300 s, not the file's 600 s nor the default 30 s
        (project / "gate").touch()
        await wait_for_status(await client.workflow("plain").get("p"), "complete", timeout=60)


BAD = [
    ("concurrency = 1", "concurrency = 0", "workflows[0].concurrency: expected an integer >= 1, got 0"),
    ("concurrency = 1", 'concurrency = "many"', "workflows[0].concurrency: expected an integer >= 1, got 'many'"),
    ("concurrency = 1", "concurrency = {{ limit = 0 }}", "workflows[0].concurrency.limit: expected an integer >= 1"),
    (
        'success = "5 minutes"',
        'success = "soon"',
        'workflows[0].retention.success: expected a duration such as "7 days"',
    ),
    (
        'error = "1 hour"',
        'errors = "1 hour"',
        "workflows[0].retention.errors: expected only the keys success and error",
    ),
    ("", "lease_seconds = 0.5", "stepstone.lease_seconds: expected a number of seconds from 1 to 3600, got 0.5"),
    ("", 'lease_seconds = "30"', "stepstone.lease_seconds: expected a number of seconds from 1 to 3600, got '30'"),
]


@pytest.mark.parametrize(("good", "bad", "message"), BAD)
@pytest.mark.parametrize("command", ["worker", "dev", "serve"])
def test_a_bad_setting_is_an_error_naming_the_key_and_the_file(
    tmp_path: Path, good: str, bad: str, message: str, command: str
) -> None:
    config = CONFIG.replace(good, bad, 1) if good else CONFIG
    write_project(tmp_path, bad if not good else "", config=config)
    result = subprocess.run(
        [sys.executable, "-m", "stepstone.cli", command],
        cwd=tmp_path,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert f"stepstone.toml: {message}" in result.stderr


def test_lease_seconds_option_is_checked(project: Path) -> None:
    for command in ("worker", "dev"):
        result = subprocess.run(
            [sys.executable, "-m", "stepstone.cli", command, "--lease-seconds", "0.1"],
            cwd=project,
            env=environment(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2 and "--lease-seconds" in result.stderr and "0.1" in result.stderr
