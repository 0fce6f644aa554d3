"""The sample project's workflow: greets, sleeps a week, waits for a reply."""

from __future__ import annotations

from typing import Any

from stepstone import WorkflowEntrypoint, WorkflowEvent, WorkflowStep


class Greeter(WorkflowEntrypoint):
    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        greeting = await step.do("greet", lambda: f"{self.env.GREETING}, {event.payload['name']}")
        await step.sleep("a week", "7 days")
        reply = await step.wait_for_event("reply", "reply", timeout="1 day")
        return {"greeting": greeting, "reply": reply.payload}
