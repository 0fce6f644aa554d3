"""The pytest plugin's fixtures: a fresh test engine per test, on SQLite or (marked) on PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from stepstone import WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from stepstone.storage.sqlite import SQLiteStorage
from stepstone.testing import TestEngine, TimeSkippingClock, wait_for_status


class Nap(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        await step.sleep("nap", "30 days")
        return await step.do("wake", lambda: "awake")


async def test_the_engine_fixture_is_a_started_test_engine_on_a_fresh_sqlite_file(
    engine: TestEngine, stepstone_database: str, tmp_path: Any
) -> None:
    assert stepstone_database == f"sqlite:///{tmp_path / 'stepstone.db'}"
    assert isinstance(engine.storage, SQLiteStorage) and isinstance(engine.clock, TimeSkippingClock)
    assert await engine.list_workflows() == []
    wf = engine.register(Nap, name="nap")
    assert (await wait_for_status(await wf.create(), "complete")).output == "awake"
    assert engine.clock.elapsed >= 30 * 86400


@pytest.mark.stepstone_postgres
async def test_the_marker_runs_the_engine_on_a_fresh_postgres_database(
    engine: TestEngine, stepstone_database: str
) -> None:
    assert stepstone_database.startswith("postgresql://") and "/stepstone_t_" in stepstone_database
    assert await engine.list_workflows() == []
    wf = engine.register(Nap, name="nap")
    assert (await wait_for_status(await wf.create(), "complete")).output == "awake"
