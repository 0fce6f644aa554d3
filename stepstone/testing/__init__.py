"""The test kit: a time-skipping clock, a test engine, Cloudflare's workflow introspection, and waits.

Example::

    async with TestEngine(f"sqlite:///{tmp_path / 't.db'}") as engine:
        wf = engine.register(MyWorkflow, name="w", binding="MY_WORKFLOW")
        inst = await wf.create(params={})
        assert (await wait_for_status(inst, "complete")).output == ...

With ``stepstone[test]`` installed, the pytest plugin gives the ``engine`` and ``project`` fixtures. See
docs/testing.md.
"""

from __future__ import annotations

from stepstone.testing.clock import FakeClock, TimeSkippingClock
from stepstone.testing.engine import FAKE_CLOCK_ENGINE_OPTIONS, TestEngine
from stepstone.testing.introspect import (
    InstanceIntrospector,
    WorkflowIntrospector,
    introspect_workflow,
    introspect_workflow_instance,
)
from stepstone.testing.mocks import Modifier
from stepstone.testing.waits import (
    StepSelector,
    get_error,
    get_output,
    wait_for_event_wait,
    wait_for_status,
    wait_for_step_result,
)

__all__ = [
    "FAKE_CLOCK_ENGINE_OPTIONS",
    "FakeClock",
    "InstanceIntrospector",
    "Modifier",
    "StepSelector",
    "TestEngine",
    "TimeSkippingClock",
    "WorkflowIntrospector",
    "get_error",
    "get_output",
    "introspect_workflow",
    "introspect_workflow_instance",
    "wait_for_event_wait",
    "wait_for_status",
    "wait_for_step_result",
]
