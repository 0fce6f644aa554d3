"""The plugin's ``project`` fixture: this directory's wrangler.toml loaded as ``stepstone dev`` loads it."""

from __future__ import annotations

from stepstone.pytest_plugin import TestProject
from stepstone.testing import TestEngine, TimeSkippingClock, wait_for_event_wait, wait_for_status


async def test_the_project_fixture_registers_the_configured_workflows_and_vars(project: TestProject) -> None:
    assert project.config.name == "sample"
    assert isinstance(project.engine, TestEngine) and isinstance(project.clock, TimeSkippingClock)
    assert project.env.GREETING == "Hi"
    instance = await project.env.GREETER.create(params={"name": "Ada"})
    await wait_for_event_wait(instance, "reply")
    await instance.send_event(type="reply", payload="hello back")
    status = await wait_for_status(instance, "complete")
    assert status.output == {"greeting": "Hi, Ada", "reply": "hello back"}
    assert project.clock.elapsed >= 7 * 86400


async def test_each_test_gets_a_fresh_database(project: TestProject) -> None:
    assert (await project.env.GREETER.list_instances()).total == 0  # nothing left over from the test above
