"""What every handler shares: the engine, the authenticator, the body cap, and the bulk jobs running."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, cast

from starlette.requests import Request
from starlette.responses import Response

from stepstone.binding import Workflow, WorkflowInstance
from stepstone.engine import Engine
from stepstone.errors import ValidationError
from stepstone.limits import validate_workflow_name
from stepstone.models import InstanceRecord, WorkflowRecord
from stepstone.server.auth import Authenticator
from stepstone.server.envelope import INSTANCE_NOT_FOUND, WORKFLOW_NOT_FOUND, ApiError, bad_request

Handler = Callable[[Request], Awaitable[Response]]

ADDRESSABLE_ID: Final = re.compile(r"^[a-zA-Z0-9, */#_-]{1,271}$")
"""Ids that may be looked up: created ids plus cron-created ones (``*/30 * * * *-1786001400000``)."""


@dataclass(slots=True)
class ServerState:
    """The server's state, on ``app.state.stepstone``."""

    engine: Engine
    auth: Authenticator
    body_cap: int
    body_timeout: float
    """Seconds a request has to send its whole body."""
    terminators: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    """Running terminate-by-status jobs, by workflow name."""
    metrics_also: tuple[str, ...] = ()
    """``/metrics`` URLs of other processes whose metrics ours include (``stepstone dev``'s worker child)."""

    def workflow_name(self, name: str) -> str:
        """A workflow name from a path, validated (400 when malformed)."""
        try:
            return validate_workflow_name(name, self.engine.limits)
        except ValidationError as exc:
            raise bad_request(str(exc)) from None

    async def workflow_record(self, name: str) -> WorkflowRecord:
        """The workflow's record; 404 when the database does not know it."""
        record = await self.engine.storage.get_workflow(self.workflow_name(name))
        if record is None:
            raise ApiError(
                404,
                WORKFLOW_NOT_FOUND,
                f"workflow {name!r} not found: create it with PUT .../workflows/{name} "
                "or start a worker that registers it",
            )
        return record

    async def workflow(self, name: str) -> Workflow:
        """The binding of a workflow the database knows (404 otherwise)."""
        await self.workflow_record(name)
        return self.engine.workflow(name)

    async def instance(self, name: str, instance_id: str) -> tuple[WorkflowInstance, InstanceRecord]:
        """A handle and the record of an existing instance (404 for an unknown workflow or instance)."""
        wf = await self.workflow(name)
        if not ADDRESSABLE_ID.fullmatch(instance_id):
            raise bad_request(
                f"instance id {instance_id[:80]!r} is invalid: expected 1-271 letters, digits, "
                "'_', '-', ',', ' ', '*', '/' or '#'"
            )
        handle = WorkflowInstance(wf, instance_id)
        record = await self.engine.storage.get_instance(wf.name, instance_id)
        if record is None:
            raise ApiError(404, INSTANCE_NOT_FOUND, f"instance {instance_id!r} not found in workflow {name!r}")
        return handle, record

    def terminator_running(self, name: str) -> bool:
        """Whether a terminate-by-status job is running for the workflow."""
        task = self.terminators.get(name)
        return task is not None and not task.done()


def state_of(request: Request) -> ServerState:
    """The server state of the app serving ``request``."""
    return cast(ServerState, request.app.state.stepstone)
