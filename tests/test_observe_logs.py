"""Logs: the engine's line per instance event, the instance id on user logs and prints, quiet replays."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from stepstone import Engine, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from stepstone.observe.logs import InstanceStdout, TextFormatter, duration_text, setup_logging
from stepstone.testing import wait_for_status

user_log = logging.getLogger("myapp")


class Flaky(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        print("before the steps")
        user_log.info("outside steps, before the sleep")

        def flaky(ctx: Any) -> str:
            print("inside the step")
            user_log.info("inside the step")
            if ctx.attempt == 1 and event.payload.get("fail"):
                raise KeyError("filez")
            return "ok"

        got = await step.do("fetch", {"retries": {"limit": 2, "delay": 30, "backoff": "constant"}}, flaky)
        await step.sleep("nap", 40)
        user_log.info("outside steps, after the sleep")
        print("done", got)
        return got


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = setup_logging("info", "json", stream=stream)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)


async def test_event_lines_ids_and_quiet_replays(db_url: str, logs: io.StringIO) -> None:
    out = io.StringIO()
    saved, sys.stdout = sys.stdout, InstanceStdout(out)  # here, not in a fixture: pytest's capture resets it
    try:
        # Every retry wait and sleep hibernates (inprocess_wait_s=0): run() is replayed twice after its first pass.
        async with Engine(db_url, inprocess_wait_s=0.0, poll_interval=0.02) as engine:
            wf = engine.register(Flaky, name="flaky")
            inst = await wf.create(id="i-1", params={"fail": True})
            await wait_for_status(inst, "complete")
    finally:
        sys.stdout = saved
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    mine = [ln for ln in lines if ln.get("instance_id") == "i-1"]
    assert all(ln["workflow"] == "flaky" for ln in mine)
    events = [ln["event"] for ln in mine if "event" in ln]
    assert events == ["created", "step_retrying", "step_completed", "sleeping", "completed"]
    retry = next(ln for ln in mine if ln.get("event") == "step_retrying")
    assert retry["attempt"] == 1 and retry["delay_ms"] >= 0 and "KeyError" in retry["error"]
    assert "retrying in" in retry["message"]
    done = next(ln for ln in mine if ln.get("event") == "step_completed")
    assert done["attempt"] == 2 and done["step"] == "fetch"
    sleeping = next(ln for ln in mine if ln.get("event") == "sleeping")
    assert sleeping["until"].endswith("Z")
    # User logging inside run(): stamped with the instance, outside steps once per live pass (the two replays
    # that served "fetch" and "nap" from history say nothing), inside the step once per attempt.
    user = [ln["message"] for ln in mine if ln["logger"] == "myapp"]
    assert user == [
        "outside steps, before the sleep",
        "inside the step",
        "inside the step",
        "outside steps, after the sleep",
    ]
    # print(): the same rules, each line prefixed with the workflow and instance.
    assert out.getvalue().splitlines() == [
        "[flaky/i-1] before the steps",
        "[flaky/i-1] inside the step",
        "[flaky/i-1] inside the step",
        "[flaky/i-1] done ok",
    ]


def test_print_outside_runs_passes_through() -> None:
    out = io.StringIO()
    wrapped = InstanceStdout(out)
    print("a", "b", file=wrapped)
    wrapped.write("partial")
    wrapped.write(" line\n")
    assert out.getvalue() == "a b\npartial line\n"


def test_text_format_names_the_instance() -> None:
    record = logging.LogRecord("stepstone.instance", logging.INFO, __file__, 1, 'step "x" completed', None, None)
    record.workflow, record.instance_id = "wf", "id-1"
    assert 'INFO  wf/id-1: step "x" completed' in TextFormatter().format(record)
    plain = logging.LogRecord("stepstone.worker", logging.WARNING, __file__, 1, "claim failed", None, None)
    assert "WARNING stepstone.worker: claim failed" in TextFormatter().format(plain)


def test_durations_read_well() -> None:
    texts = [duration_text(s) for s in (0.0123, 2.5, 75, 7200, 3 * 86400)]
    assert texts == ["12ms", "2.5s", "1m 15s", "2h 0m", "3d 0h"]
