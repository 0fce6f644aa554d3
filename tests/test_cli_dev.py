"""`stepstone dev` as a subprocess: it runs the project, serves the API, and restarts the worker when the code
changes, so a sleeping instance finishes on the new code; and the CLI's --api mode against that server."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from stepstone.cli import cli

WORKFLOW = """
from stepstone import WorkflowEntrypoint

VERSION = "old"


class Edited(WorkflowEntrypoint):
    async def run(self, event, step):
        before = await step.do("before", lambda: VERSION)
        await step.sleep("nap", event.payload.get("nap", 1500))
        after = await step.do("after", lambda: VERSION)
        return {"before": before, "after": after}
"""

CONFIG = """
name = "devtest"
main = "app.py"

[[workflows]]
name = "edited"
binding = "EDITED"
class_name = "Edited"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def dev(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, int]]:
    (tmp_path / "stepstone.toml").write_text(CONFIG)
    (tmp_path / "app.py").write_text(WORKFLOW)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)
    port = free_port()
    log = (tmp_path / "dev.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepstone.cli", "dev", "--port", str(port), "--watch-interval", "0.1"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield tmp_path, port
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert "stepstone dev stopped" in (tmp_path / "dev.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def sc(*args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_dev_restarts_the_worker_and_a_sleeping_instance_finishes_on_the_new_code(dev: tuple[Path, int]) -> None:
    root, port = dev
    log = root / "dev.log"
    wait_for(lambda: log.read_text().count("ready:") == 1, 20, "the worker to start")
    # The nap must outlast the worker's restart (file watch, stop, new process, ready): the old worker must not
    # be the one that wakes i1. 1.5 s was once too short on a clean clone's first run.
    sc("workflows", "trigger", "edited", '{"nap": 6000}', "--id", "i1")
    wait_for(lambda: sc("workflows", "instances", "describe", "edited", "i1")["status"] == "waiting", 10, "sleep")

    source = (root / "app.py").read_text()
    (root / "app.py").write_text(source.replace('VERSION = "old"', 'VERSION = "new"'))
    wait_for(lambda: "app.py changed: restarting the worker" in log.read_text(), 10, "the restart")
    wait_for(lambda: log.read_text().count("ready:") == 2, 20, "the new worker")

    doc = wait_for(
        lambda: (d := sc("workflows", "instances", "describe", "edited", "i1"))["status"] == "complete" and d,
        25,
        "completion",
    )
    assert doc["output"] == {"before": "old", "after": "new"}  # "before" replayed from history, "after" is new

    # The API dev serves, through the CLI's --api mode.
    api = f"http://127.0.0.1:{port}"
    listed = sc("workflows", "instances", "list", "edited", "--api", api)
    assert [i["id"] for i in listed] == ["i1"]
    created = sc("workflows", "trigger", "edited", '{"nap": 10}', "--id", "via-api", "--api", api)
    assert created["id"] == "via-api"
    finished = sc("workflows", "trigger", "edited", '{"nap": 10}', "--id", "w2", "--api", api, "--wait")
    assert finished["status"] == "complete" and finished["output"] == {"before": "new", "after": "new"}
    latest = sc("workflows", "instances", "describe", "edited", "latest", "--api", api)
    assert latest["status"] == "complete"
    assert sc("workflows", "describe", "edited", "--api", api)["name"] == "edited"
    assert "edited" in [w["name"] for w in sc("workflows", "list", "--api", api)]

    # The console: one line per instance event, with the workflow and instance (docs/observe.md); i1 was
    # created by the CLI's own process, so its "created" line is printed there, not here.
    text = log.read_text()
    for line in (
        "edited/via-api: created (trigger api)",
        'edited/i1: step "before" completed in',
        'edited/i1: sleeping "nap"',
    ):
        assert line in text, text
    wait_for(lambda: "edited/w2: completed in" in log.read_text(), 10, "the completed line")
    # /metrics of dev adds the worker child's metrics to the API process's own.
    from prometheus_client.parser import text_string_to_metric_families

    scraped = httpx.get(f"{api}/metrics", timeout=10).text
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(scraped)
        for s in f.samples
    }
    assert (
        values[("stepstone_instances_created_total", (("trigger", "api"), ("workflow", "edited")))] == 2
    )  # via the API
    assert values[("stepstone_steps_finished_total", (("status", "success"), ("workflow", "edited")))] >= 4
    assert values[("stepstone_instances", (("status", "complete"), ("workflow", "edited")))] == 3


def test_dev_survives_a_broken_edit(dev: tuple[Path, int]) -> None:
    root, _ = dev
    log = root / "dev.log"
    wait_for(lambda: "ready:" in log.read_text(), 20, "the worker to start")
    source = (root / "app.py").read_text()
    (root / "app.py").write_text(source + "\ndef broken(:\n")
    wait_for(lambda: "the worker exited with code 1" in log.read_text(), 15, "the broken worker to be reported")
    assert "import failed: SyntaxError" in log.read_text()
    (root / "app.py").write_text(source)
    wait_for(lambda: log.read_text().count("ready:") == 2, 20, "the fixed worker")
    done = sc("workflows", "trigger", "edited", '{"nap": 10}', "--wait")
    assert done["status"] == "complete"
