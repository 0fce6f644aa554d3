"""The quickstart: an onboarding workflow with retries, a durable sleep and an approval event.

Run it with ``scripts/demo`` (or ``python examples/quickstart.py``). It uses the embedded default: a SQLite file
in ``./.stepstone/``. Kill it at any moment and run it again: the instance carries on from its last step.
"""

from __future__ import annotations

import asyncio
import random
import sys
from typing import Any

from stepstone import Engine, WorkflowEntrypoint, WorkflowEvent, WorkflowStep, WorkflowTimeoutError
from stepstone.testing import wait_for_status


class Onboarding(WorkflowEntrypoint):
    """Fetch a user, send a welcome mail (flaky: retried), wait a moment, then wait for an approval."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        user = await step.do("fetch user", lambda: {"id": event.payload["user_id"], "name": "Ada"})
        print(f"  step 'fetch user' -> {user}")

        def send_welcome(ctx: Any) -> str:
            if ctx.attempt < 2 and random.random() < 0.9:
                raise ConnectionError("mail server busy")
            return f"sent to {user['name']} on attempt {ctx.attempt}"

        sent = await step.do("send welcome", {"retries": {"limit": 3, "delay": "1 second"}}, send_welcome)
        print(f"  step 'send welcome' -> {sent}")
        await step.sleep("trial", "2 seconds")
        print("  slept 2 seconds (the instance hibernated and replayed)")
        try:
            approval = await step.wait_for_event("approval", "approval", timeout="30 seconds")
            approved = bool(approval.payload.get("ok"))
        except WorkflowTimeoutError:
            approved = False
        return {"user": user["name"], "welcome": sent, "approved": approved}


async def main() -> int:
    async with Engine() as engine:  # SQLite in ./.stepstone/stepstone.db
        onboarding = engine.register(Onboarding, name="onboarding", binding="ONBOARDING")
        instance_id = sys.argv[1] if len(sys.argv) > 1 else None
        if instance_id is not None:
            instance = await onboarding.get(instance_id)
            print(f"resuming instance {instance.id}")
        else:
            instance = await onboarding.create(params={"user_id": 42})
            print(f"created instance {instance.id}")
        print("run() replays from the top after each hibernation, so code outside steps prints again:")
        status = await wait_for_status(instance, "waiting", timeout=60)
        details = await instance.describe()
        while details["waiting_for"] is None or details["waiting_for"]["kind"] != "waitForEvent":
            await asyncio.sleep(0.1)
            details = await instance.describe()
        print(f"  status: {status.status}, waiting for {details['waiting_for']['types']}; sending approval")
        await instance.send_event(type="approval", payload={"ok": True})
        final = await wait_for_status(instance, "complete", timeout=60)
        print(f"instance {instance.id} is {final.status}: {final.output}")
        for entry in (await instance.describe())["steps"]:
            print(f"  {entry['type']:13} {entry['name']:16} {entry.get('success', entry.get('finished'))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
