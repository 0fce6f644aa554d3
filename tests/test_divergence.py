"""Replay divergence: code changed under a waiting instance so that its replay no longer reaches the recorded
steps. Recorded per version, logged, shown in ``describe``, REST details (a real ``stepstone serve`` process) and
the CLI; ``on_divergence="fail"`` (``register()``, the class, ``stepstone.toml``) errors the instance before the
new step runs. Unchanged code, and concurrent branches replayed out of order, are no divergence. SQLite and
PostgreSQL."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstone import Engine, ReplayDivergenceError, ValidationError, WorkflowEntrypoint
from stepstone.config import parse_config, read_file
from stepstone.testing import wait_for_event_wait, wait_for_status
from tests.test_server_cli import serve_process
from tests.test_versions import V4, load

CHARGES: list[str] = []

V1 = """
from tests import test_divergence as t


class Checkout(WorkflowEntrypoint):
    async def run(self, event, step):
        await step.do("charge card", lambda: t.CHARGES.append("v1") or "charged")
        await step.wait_for_event("shipped", "shipped", timeout="1 hour")
        return await step.do("ship", lambda: "shipped")
"""
V1 = "from stepstone import WorkflowEntrypoint\n" + V1
RENAMED = V1.replace(
    'step.do("charge card", lambda: t.CHARGES.append("v1")', 'step.do("charge the card", lambda: t.CHARGES.append("v2")'
)
ADDED = V1.replace(
    '        return await step.do("ship"',
    '        await step.do("send receipt", lambda: "sent")\n        return await step.do("ship"',
)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    CHARGES.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_url"))
    return str(request.getfixturevalue("postgres_url"))


async def deploy(url: str, cls: type[WorkflowEntrypoint], **options: Any) -> Engine:
    engine = Engine(url, poll_interval=0.05)
    engine.register(cls, name="checkout", **options)
    await engine.start()
    return engine


async def waiting_instance(url: str, tmp_path: Path) -> None:
    """An instance of V1 that charged the card and waits for ``shipped``."""
    engine = await deploy(url, load(tmp_path, V1))
    try:
        made = await engine.workflow("checkout").create(id="order-1")
        await wait_for_event_wait(made, "shipped")
        assert CHARGES == ["v1"]
    finally:
        await engine.stop()


async def test_a_renamed_step_is_a_divergence_recorded_logged_and_described(
    url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await waiting_instance(url, tmp_path)
    engine = await deploy(url, load(tmp_path, RENAMED))  # renamed a recorded step: its work runs again
    try:
        with caplog.at_level(logging.WARNING, logger="stepstone.executor"):
            inst = await engine.workflow("checkout").get("order-1")
            await inst.send_event("shipped", {})
            assert (await wait_for_status(inst, "complete")).output == "shipped"
        assert CHARGES == ["v1", "v2"]  # what the message warns of: the card was charged again
        doc = await inst.describe()
        (diverged,) = doc["divergence"]
        expected = (
            "recorded step 'charge card' (do, 1) was not reached by this version; these steps ran for the first "
            "time: 'charge the card' (do, 1), 'ship' (do, 1)"
        )
        assert diverged["message"] == expected
        assert diverged["version_id"] == engine.definitions["checkout"].version_id != doc["versionId"]
        assert diverged["not_reached"] == [{"name": "charge card", "type": "do", "count": 1}]
        assert diverged["reached_late"] == [{"name": "shipped", "type": "waitForEvent", "count": 1}]
        assert diverged["failed"] is False
        assert any("replay diverged" in r.message and "'charge card' (do, 1)" in r.message for r in caplog.records)
    finally:
        await engine.stop()

    with serve_process(["--database", url], {}, tmp_path) as (_, base):
        details = httpx.get(f"{base}{V4}/checkout/instances/order-1").json()["result"]
        assert details["divergence"][0]["message"] == expected
        assert next(v["id"] for v in details["ran_versions"]) == details["versionId"]
        described = subprocess.run(
            [
                sys.executable,
                "-m",
                "stepstone.cli",
                "workflows",
                "instances",
                "describe",
                "checkout",
                "order-1",
                "--api",
                base,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        assert described.returncode == 0, described.stderr
        assert "Divergence:" in described.stdout and "'charge card' (do, 1) was not reached" in described.stdout
        assert "Ran Versions:" in described.stdout


async def test_on_divergence_fail_errors_the_instance_before_the_new_step_runs(url: str, tmp_path: Path) -> None:
    await waiting_instance(url, tmp_path)
    engine = await deploy(url, load(tmp_path, RENAMED), on_divergence="fail")
    try:
        inst = await engine.workflow("checkout").get("order-1")
        await inst.send_event("shipped", {})
        status = await wait_for_status(inst, "errored")
        assert status.error is not None and status.error.name == "ReplayDivergenceError"
        assert "'charge card' (do, 1)" in status.error.message and "would have run" in status.error.message
        assert "'charge the card' (do, 1)" in status.error.message
        assert CHARGES == ["v1"]  # the renamed step never ran
        doc = await inst.describe()
        assert doc["divergence"][0]["failed"] is True
        assert [s["name"] for s in doc["steps"]] == ["charge card-1", "shipped-1"]
    finally:
        await engine.stop()


class StrictCheckout(WorkflowEntrypoint):
    on_divergence = "fail"

    async def run(self, event: Any, step: Any) -> Any:
        return None


async def test_a_new_step_after_the_recorded_ones_is_safe_and_bad_options_are_refused(url: str, tmp_path: Path) -> None:
    await waiting_instance(url, tmp_path)
    engine = await deploy(url, load(tmp_path, ADDED), on_divergence="fail")  # added a step with a new name: safe
    try:
        inst = await engine.workflow("checkout").get("order-1")
        await inst.send_event("shipped", {})
        assert (await wait_for_status(inst, "complete")).output == "shipped"
        doc = await inst.describe()
        assert doc["divergence"] is None and len(doc["ran_versions"]) == 2
        with pytest.raises(ValidationError, match=r"on_divergence must be \"record\" or \"fail\", got 'sometimes'"):
            engine.register(StrictCheckout, name="strict", on_divergence="sometimes")
        assert engine.register(StrictCheckout, name="strict") is not None
        assert engine.definitions["strict"].on_divergence == "fail"  # the class's own setting
        assert engine.register(StrictCheckout, name="lenient", on_divergence="record") is not None
        assert engine.definitions["lenient"].on_divergence == "record"
    finally:
        await engine.stop()


BRANCHES = """
import asyncio

from stepstone import WorkflowEntrypoint


class Checkout(WorkflowEntrypoint):
    async def run(self, event, step):
        async def late():
            await step.do("b1", lambda: "b1")
            return await step.do("b2", lambda: "b2")

        async def early():
            return await step.do("a1", lambda: "a1")

        return await asyncio.gather(late(), early())
"""


async def test_unchanged_code_and_concurrent_branches_are_no_divergence(url: str, tmp_path: Path) -> None:
    engine = await deploy(url, load(tmp_path, BRANCHES), on_divergence="fail")
    try:
        inst = await engine.workflow("checkout").create(id="branches")
        assert (await wait_for_status(inst, "complete")).output == ["b2", "a1"]
        assert [s.name for s in await inst.history()] == ["b1", "a1", "b2"]  # the order they first started
        # Restarting from b2 keeps b1 and a1: the replay calls b2 (not in history) right after b1, before the
        # other branch has reached its recorded a1. The run lets that branch catch up before judging: no divergence.
        await inst.restart({"name": "b2"})
        assert (await wait_for_status(inst, "complete")).output == ["b2", "a1"]
        doc = await inst.describe()
        assert doc["divergence"] is None and [v["id"] for v in doc["ran_versions"]] == [doc["versionId"]]
    finally:
        await engine.stop()


def test_on_divergence_in_stepstone_toml(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("")

    def config(value: str) -> Path:
        path = tmp_path / "stepstone.toml"
        path.write_text(
            f'name = "p"\nmain = "m.py"\n[[workflows]]\nname = "w"\nbinding = "W"\nclass_name = "C"\n'
            f"on_divergence = {value}\n"
        )
        return path

    path = config('"fail"')
    assert parse_config(path, read_file(path), {}).workflows[0].on_divergence == "fail"
    path = config('"never"')
    with pytest.raises(ValidationError, match=r"workflows\[0\]\.on_divergence"):
        parse_config(path, read_file(path), {})
    assert ReplayDivergenceError.__mro__[1].__name__ == "WorkflowFatalError"
