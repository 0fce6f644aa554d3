"""Human-in-the-loop approval with a timeout: record a pending request, wait for an ``approval-response`` event,
then process the approval, handle the rejection, or auto-reject when nobody answered in time.
The seed's ``ApprovalWorkflow``, with SQLite for D1."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from stepstone import WorkflowEntrypoint, WorkflowEvent, WorkflowStep, WorkflowTimeoutError

HERE = Path(__file__).resolve().parent


def execute(env: Any, sql: str, *args: Any) -> None:
    path = HERE / env.APP_DB
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS approvals (id TEXT PRIMARY KEY, user_id TEXT, status TEXT, note TEXT)")
        db.execute(sql, args)


class ApprovalWorkflow(WorkflowEntrypoint):
    """Params: ``{"userId": "u1", "timeout": "48 hours"}``; answer with an ``approval-response`` event whose payload
    is ``{"approved": true|false, "note": "..."}``."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        request = event.instance_id
        user = event.payload.get("userId", "anonymous")
        await step.do(
            "create approval request",
            lambda: execute(self.env, "INSERT OR IGNORE INTO approvals VALUES (?, ?, 'pending', NULL)", request, user),
        )

        try:
            answer = await step.wait_for_event(
                "wait for approval", "approval-response", timeout=event.payload.get("timeout", "48 hours")
            )
        except WorkflowTimeoutError:
            await step.do(
                "auto reject",
                lambda: execute(self.env, "UPDATE approvals SET status = 'auto-rejected' WHERE id = ?", request),
            )
            return {"status": "auto-rejected"}

        note = answer.payload.get("note")
        if answer.payload.get("approved"):
            status = "approved"
            await step.do(
                "process approval",
                lambda: execute(
                    self.env, "UPDATE approvals SET status = ?, note = ? WHERE id = ?", status, note, request
                ),
            )
        else:
            status = "rejected"
            await step.do(
                "handle rejection",
                lambda: execute(
                    self.env, "UPDATE approvals SET status = ?, note = ? WHERE id = ?", status, note, request
                ),
            )
        return {"status": status, "note": note, "answered_at": answer.timestamp.isoformat()}
