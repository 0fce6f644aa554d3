"""User lifecycle: a welcome email, a trial period (a durable sleep), then a follow-up only if the user has not
converted. The seed's ``UserLifecycleWorkflow``, with SQLite standing in for D1 and an outbox table for email."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from stepstone import NonRetryableError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep

HERE = Path(__file__).resolve().parent


def connect(env: Any) -> sqlite3.Connection:
    path = HERE / env.APP_DB
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS users (id TEXT PRIMARY KEY, email TEXT, subscription_status TEXT)")
    db.execute(
        "CREATE TABLE IF NOT EXISTS outbox (instance TEXT, email TEXT, subject TEXT, UNIQUE (instance, subject))"
    )
    return db


def send_email(env: Any, instance: str, email: str, subject: str) -> str:
    # INSERT OR IGNORE keyed by (instance, subject): a step that is retried after a crash sends once.
    with connect(env) as db:
        db.execute("INSERT OR IGNORE INTO outbox VALUES (?, ?, ?)", (instance, email, subject))
    return f"sent {subject!r} to {email}"


class UserLifecycleWorkflow(WorkflowEntrypoint):
    """Params: ``{"userId": "u1", "email": "ada@example.com", "trial": "7 days"}`` (``trial`` optional)."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        p = event.payload
        if not p.get("userId") or not p.get("email"):
            raise NonRetryableError("params need userId and email")

        await step.do("send welcome email", lambda: send_email(self.env, event.instance_id, p["email"], "Welcome!"))

        await step.sleep("wait for trial period", p.get("trial", "7 days"))

        def check_conversion() -> bool:
            with connect(self.env) as db:
                row = db.execute("SELECT subscription_status FROM users WHERE id = ?", (p["userId"],)).fetchone()
            return bool(row and row[0] == "active")

        has_converted = await step.do("check conversion", check_conversion)

        if not has_converted:
            await step.do(
                "send trial expiration email",
                lambda: send_email(self.env, event.instance_id, p["email"], "Your trial is ending"),
            )
        return {"converted": has_converted}
