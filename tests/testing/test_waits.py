"""The wait helpers: what they return, and the errors that say why a wait cannot succeed."""

from __future__ import annotations

from typing import Any

import pytest

import stepstone.testing
from stepstone import NonRetryableError, ValidationError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep
from stepstone.testing import (
    TestEngine,
    get_error,
    get_output,
    wait_for_event_wait,
    wait_for_status,
    wait_for_step_result,
)


class Refused(Exception):
    pass


class Steps(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        first = await step.do("first", lambda: {"n": 1})
        await step.do("again", lambda: 2)
        await step.do("again", lambda: 3)
        if event.payload.get("fail"):

            def refuse() -> None:
                raise NonRetryableError("no")

            await step.do("refuse", refuse)
        return first


async def test_step_results_by_name_and_count_and_the_output(db_url: str) -> None:
    async with TestEngine(db_url) as engine:
        wf = engine.register(Steps, name="steps")
        inst = await wf.create(params={})
        assert await wait_for_step_result(inst, "first") == {"n": 1}
        assert await wait_for_step_result(inst, {"name": "again", "count": 2}) == 3
        assert await wait_for_step_result(inst, {"name": "again", "index": 1, "type": "do"}) == 2
        await wait_for_status(inst, "complete")
        assert await get_output(inst) == {"n": 1}
        with pytest.raises(AssertionError, match="has no error"):
            await get_error(inst)
        with pytest.raises(AssertionError, match="without a result"):
            await wait_for_step_result(inst, "never ran")
        with pytest.raises(AssertionError, match="can never reach"):
            await wait_for_status(inst, "errored")
        with pytest.raises(AssertionError, match="before waiting for an event"):
            await wait_for_event_wait(inst, "approval")


async def test_a_failed_step_raises_its_error_and_the_instance_has_one(db_url: str) -> None:
    async with TestEngine(db_url) as engine:
        inst = await engine.register(Steps, name="steps").create(params={"fail": True})
        with pytest.raises(NonRetryableError, match="no"):
            await wait_for_step_result(inst, "refuse")
        await wait_for_status(inst, "errored")
        error = await get_error(inst)
        assert (error.name, error.message) == ("NonRetryableError", "no")
        with pytest.raises(AssertionError, match="has no output"):
            await get_output(inst)


@pytest.mark.parametrize(
    ("selector", "field"),
    [
        (3, "expected a step name"),
        ({"count": 1}, "'name'"),
        ({"name": "a", "count": 0}, "'count'"),
        ({"name": "a", "type": "nap"}, "'type'"),
        ({"name": "a", "step": 1}, "unknown key"),
    ],
)
async def test_a_bad_selector_is_refused_naming_the_field(db_url: str, selector: Any, field: str) -> None:
    async with TestEngine(db_url) as engine:
        inst = await engine.register(Steps, name="steps").create(params={})
        with pytest.raises(ValidationError, match=field):
            await wait_for_step_result(inst, selector)


def test_the_kit_exports_a_sorted_all_with_docstrings() -> None:
    names = stepstone.testing.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(stepstone.testing, name) is not None
        obj = getattr(stepstone.testing, name)
        if callable(obj):
            assert obj.__doc__, name
