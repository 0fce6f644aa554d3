"""A terminated instance is told by the logs and counted by the metrics whichever way it ended: terminated at once
through the API, or by the run that rolled back a ``terminate(rollback=True)``."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stepstone import Engine, WorkflowEntrypoint
from stepstone.observe.logs import setup_logging
from stepstone.testing import wait_for_status


class Booked(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        @step.with_rollback("book")
        async def book() -> str:
            return "B-1"

        @book.undo
        async def cancel(error: Any, booking: str) -> str:
            return f"cancelled {booking}"

        await book()
        await step.sleep("wait", "1 hour")
        return "done"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = setup_logging("info", "json", stream=stream)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger().setLevel(logging.WARNING)


def finished(text: str, status: str) -> float:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "stepstone_instances_finished_total" and s.labels.get("status") == status:
                return s.value
    return 0.0


async def test_terminated_both_ways_is_logged_and_counted(db_url: str, logs: io.StringIO) -> None:
    async with Engine(db_url) as engine:
        metrics = engine.enable_metrics()
        wf = engine.register(Booked, name="booked")
        plain, rolled = await wf.create(id="plain"), await wf.create(id="rolled")
        await wait_for_status(plain, "waiting")
        await wait_for_status(rolled, "waiting")
        await plain.terminate()
        await rolled.terminate(rollback=True)
        await wait_for_status(plain, "terminated")
        await wait_for_status(rolled, "terminated")
        assert finished((await metrics.exposition()).decode(), "terminated") == 2
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.strip()]
    ended = {rec["instance_id"]: rec["message"] for rec in lines if rec.get("event") == "terminated"}
    assert set(ended) == {"plain", "rolled"}
    assert "after rolling back" in ended["rolled"] and "after rolling back" not in ended["plain"]
