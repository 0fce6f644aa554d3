"""Cloudflare's workflow introspection on a test engine: each modification changes what it says, and nothing
after the block; a production engine refuses it."""

from __future__ import annotations

from typing import Any

import pytest

from stepstone import (
    Engine,
    NonRetryableError,
    ValidationError,
    WorkflowEntrypoint,
    WorkflowEvent,
    WorkflowStep,
    WorkflowTimeoutError,
)
from stepstone.testing import (
    TestEngine,
    TimeSkippingClock,
    introspect_workflow,
    introspect_workflow_instance,
    wait_for_status,
    wait_for_step_result,
)

CALLS: list[tuple[str, int]] = []
HOUR, DAY = 3600.0, 86400.0


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


class Refused(Exception):
    pass


class Long(WorkflowEntrypoint):
    """Cloudflare's TEST_LONG_WORKFLOW, in Python."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        def my_step(ctx: Any) -> str:
            CALLS.append(("my step", ctx.attempt))
            return "real result"

        result = await step.do("my step", {"retries": {"limit": 3, "delay": "1 minute"}}, my_step)
        await step.sleep("sleep for a while", "1 hour")
        await step.sleep("sleep for a while", "1 hour")
        await step.sleep("sleep for a day", "1 day")
        if event.payload == "run event":
            ev = await step.wait_for_event("my event", "event", timeout="1 day")
            return {"result": result, "event": ev.payload}
        return {"result": result}


@pytest.fixture
async def engine(db_url: str) -> Any:
    async with TestEngine(db_url, clock=TimeSkippingClock()) as engine:
        engine.register(Long, name="long", binding="LONG")
        yield engine


def steps_of(history: list[Any], name: str) -> list[Any]:
    return [s for s in history if s.name == name]


async def test_disable_sleeps_ends_every_sleep_at_once(engine: TestEngine) -> None:
    wf = engine.env.LONG
    async with introspect_workflow_instance(wf, "i1") as inst:
        await inst.modify(lambda m: m.disable_sleeps())
        start = engine.clock.now()
        await wf.create(id="i1")
        await inst.wait_for_status("complete")
        assert engine.clock.now() - start < HOUR  # no sleep took its time, not even skipped time
        history = await inst.instance.history()
    assert all(s.wake_at == s.started_at for s in history if s.kind == "sleep")
    assert await inst.get_output() == {"result": "real result"}
    assert CALLS == [("my step", 1)]  # the step itself was left alone


async def test_disable_some_sleeps_by_name_and_count(engine: TestEngine) -> None:
    wf = engine.env.LONG
    async with introspect_workflow_instance(wf, "i1") as inst:

        async def mods(m: Any) -> None:
            await m.disable_sleeps([{"name": "sleep for a while", "count": 2}, "sleep for a day"])

        await inst.modify(mods)
        await wf.create(id="i1")
        await inst.wait_for_status("complete")
        history = await inst.instance.history()
    durations = {(s.name, s.count): s.wake_at - s.started_at for s in history if s.kind == "sleep"}
    assert durations == {("sleep for a while", 1): HOUR, ("sleep for a while", 2): 0, ("sleep for a day", 1): 0}


async def test_mock_step_result_skips_the_function_and_counts_one_attempt(engine: TestEngine) -> None:
    wf = engine.env.LONG
    async with introspect_workflow_instance(wf, "i1") as inst:
        await inst.modify(lambda m: m.mock_step_result({"name": "my step"}, {"mocked": True}))
        start = engine.clock.now()
        await wf.create(id="i1")
        assert await inst.wait_for_step_result({"name": "my step"}) == {"mocked": True}
        await inst.wait_for_status("complete")  # the sleeps hibernated: replays returned the stored mock
        (step,) = steps_of(await inst.instance.history(), "my step")
        assert await inst.get_output() == {"result": {"mocked": True}}
        assert engine.clock.now() - start >= DAY + 2 * HOUR  # the sleeps were left alone (skipped by the clock)
    assert CALLS == []
    assert [a.success for a in step.attempts] == [True]


async def test_a_result_cannot_be_mocked_twice_nor_an_error_after_it(engine: TestEngine) -> None:
    async with introspect_workflow_instance(engine.env.LONG, "i1") as inst:
        await inst.modify(lambda m: m.mock_step_result("my step", 1))
        with pytest.raises(ValidationError, match="Trying to mock step 'my step' multiple times!"):
            await inst.modify(lambda m: m.mock_step_result("my step", 2))
        with pytest.raises(ValidationError, match="after mocking its result"):
            await inst.modify(lambda m: m.mock_step_error("my step", Refused("no")))
        with pytest.raises(ValidationError, match="cannot be stored"):
            await inst.modify(lambda m: m.mock_step_result({"name": "my step", "count": 2}, object()))


async def test_mock_step_error_on_every_attempt_errors_the_instance_with_that_error(engine: TestEngine) -> None:
    wf = engine.env.LONG
    async with introspect_workflow_instance(wf, "i1") as inst:
        await inst.modify(lambda m: m.disable_retry_delays().mock_step_error("my step", Refused("Oops")))
        await wf.create(id="i1")
        with pytest.raises(Refused, match="Oops"):  # the stored error, rebuilt as a replay would raise it
            await inst.wait_for_step_result("my step")
        await inst.wait_for_status("errored")
        error = await inst.get_error()
        (step,) = steps_of(await inst.instance.history(), "my step")
    assert (error.name, error.message) == ("Refused", "Oops")
    assert [(a.success, a.error_name) for a in step.attempts] == [(False, "Refused")] * 4  # limit 3: four attempts
    assert CALLS == []


async def test_a_mocked_non_retryable_error_fails_the_step_on_its_first_attempt(engine: TestEngine) -> None:
    wf = engine.env.LONG
    async with introspect_workflow_instance(wf, "i1") as inst:
        await inst.modify(lambda m: m.mock_step_error("my step", NonRetryableError("bad input", "BadInput")))
        await wf.create(id="i1")
        with pytest.raises(NonRetryableError, match="bad input"):
            await inst.wait_for_step_result("my step")
        (step,) = steps_of(await inst.instance.history(), "my step")
    assert [(a.success, a.error_name) for a in step.attempts] == [(False, "BadInput")]


async def test_errors_for_two_attempts_then_the_mocked_result(engine: TestEngine) -> None:
    wf = engine.env.LONG
    async with introspect_workflow_instance(wf, "i1") as inst:
        await inst.modify(lambda m: m.mock_step_error("my step", Refused("Oops"), 2).mock_step_result("my step", "ok"))
        start = engine.clock.now()
        await wf.create(id="i1")
        assert await inst.wait_for_step_result("my step") == "ok"
        (step,) = steps_of(await inst.instance.history(), "my step")
    assert [a.success for a in step.attempts] == [False, False, True]
    assert step.attempts[2].start - start >= 2 * 60  # the retry delays were kept (skipped by the clock)
    assert CALLS == []


async def test_a_timeout_then_an_error_then_the_real_function(engine: TestEngine) -> None:
    wf = engine.env.LONG
    async with introspect_workflow_instance(wf, "i1") as inst:
        await inst.modify(lambda m: m.force_step_timeout("my step", 1).mock_step_error("my step", Refused("x"), 1))
        await wf.create(id="i1")
        assert await inst.wait_for_step_result("my step") == "real result"
        (step,) = steps_of(await inst.instance.history(), "my step")
    assert [(a.success, a.error_name) for a in step.attempts] == [
        (False, "WorkflowTimeoutError"),
        (False, "Refused"),
        (True, None),
    ]
    assert step.attempts[0].error_message == "Execution timed out after 0ms"
    assert CALLS == [("my step", 3)]  # the third attempt ran the real function


async def test_force_step_timeout_on_every_attempt_errors_the_instance(engine: TestEngine) -> None:
    wf = engine.env.LONG
    async with introspect_workflow_instance(wf, "i1") as inst:
        await inst.modify(lambda m: m.force_step_timeout("my step"))
        await wf.create(id="i1")
        with pytest.raises(WorkflowTimeoutError):
            await inst.wait_for_step_result("my step")
        await inst.wait_for_status("errored")
        error = await inst.get_error()
    assert error.name == "WorkflowTimeoutError"
    assert CALLS == []


async def test_mock_event_reaches_the_wait_without_a_send(engine: TestEngine) -> None:
    wf = engine.env.LONG
    async with introspect_workflow_instance(wf, "i1") as inst:
        await inst.modify(lambda m: m.disable_sleeps().mock_event("event", {"data": "mocked"}))
        await wf.create(id="i1", params="run event")
        await inst.wait_for_status("complete")
        received = await inst.wait_for_step_result({"name": "my event", "type": "waitForEvent"})
        assert (received["type"], received["payload"]) == ("event", {"data": "mocked"})
        assert (await inst.get_output())["event"] == {"data": "mocked"}


async def test_force_event_timeout_times_the_wait_out_at_once(engine: TestEngine) -> None:
    wf = engine.env.LONG
    async with introspect_workflow_instance(wf, "i1") as inst:
        await inst.modify(lambda m: m.disable_sleeps().force_event_timeout({"name": "my event"}))
        start = engine.clock.now()
        await wf.create(id="i1", params="run event")
        with pytest.raises(AssertionError, match="can never reach"):
            await inst.wait_for_status("complete")
        assert (await inst.get_error()).name == "WorkflowTimeoutError"
        assert engine.clock.now() - start < HOUR  # not the day the wait allowed


async def test_introspect_workflow_covers_instances_created_in_the_block_only(engine: TestEngine) -> None:
    wf = engine.env.LONG
    before = await wf.create(id="before")
    async with introspect_workflow(wf) as introspector:
        await introspector.modify(lambda m: m.disable_sleeps().mock_step_result("my step", "mocked"))
        made = (await wf.create_batch({"instances": [{}, {}, {"id": "known"}]})).created
        single = await wf.create()
        found = introspector.get()
        assert [i.id for i in found] == [*(m.id for m in made), single.id]
        for inst in found:
            assert await inst.wait_for_step_result("my step") == "mocked"
            await inst.wait_for_status("complete")
        assert (await wait_for_status(before, "complete", timeout=30)).output == {"result": "real result"}
    after = await wf.create(id="after")
    assert (await wait_for_status(after, "complete", timeout=30)).output == {"result": "real result"}
    assert CALLS == [("my step", 1), ("my step", 1)]  # "before" and "after" ran the real step


async def test_leaving_the_block_drops_the_mocks_and_terminates_what_still_runs(engine: TestEngine) -> None:
    wf = engine.env.LONG
    async with introspect_workflow_instance(wf, "i1") as inst:
        await inst.modify(lambda m: m.mock_step_result("my step", "mocked"))
        await wf.create(id="i1", params="run event")
        await inst.wait_for_event_wait("event")
    assert (await inst.instance.status()).status == "terminated"
    assert engine.mocks.instances == {}
    await inst.instance.restart()
    assert await wait_for_step_result(inst.instance, "my step") == "real result"  # the mock is gone


class Quick(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        return await step.do("my step", lambda: "real result")


async def test_mocks_are_refused_outside_a_test_engine(db_url: str) -> None:
    async with Engine(db_url) as production:
        wf = production.register(Quick, name="long", binding="LONG")
        with pytest.raises(TypeError, match="production Engine"):
            introspect_workflow(wf)
        with pytest.raises(TypeError, match="production Engine"):
            introspect_workflow_instance(production.env.LONG, "i1")
        assert production.worker is not None and production.worker.test_hooks is None
        inst = await wf.create(params="x")
        assert (await wait_for_status(inst, "complete", timeout=30)).output == "real result"
    with pytest.raises(TypeError, match="keyword"):
        Engine(db_url, test_hooks=object())  # type: ignore[call-arg]
