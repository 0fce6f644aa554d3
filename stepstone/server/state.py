"""What every handler shares: the engine, the authenticator, the body cap, and the bulk jobs running; and what one
request may reach (:class:`Scope`: the account in its path)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, cast

from starlette.requests import Request
from starlette.responses import Response

from stepstone.binding import Account, Workflow
from stepstone.engine import Engine
from stepstone.errors import InstanceNotFoundError, ValidationError
from stepstone.instance import WorkflowInstance
from stepstone.limits import validate_workflow_name
from stepstone.models import DEFAULT_ACCOUNT, InstanceRecord, WorkflowRecord
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
    terminators: dict[tuple[str, str], asyncio.Task[None]] = field(default_factory=dict)
    """Running terminate-by-status jobs, by account and workflow name."""
    metrics_also: tuple[str, ...] = ()
    """``/metrics`` URLs of other processes whose metrics ours include (``stepstone dev``'s worker child)."""

    def workflow_name(self, name: str) -> str:
        """A workflow name from a path, validated (400 when malformed)."""
        try:
            return validate_workflow_name(name, self.engine.limits)
        except ValidationError as exc:
            raise bad_request(str(exc)) from None

    def scope(self, account_id: str) -> Scope:
        """What a request for ``account_id`` may reach (400 for a malformed id)."""
        try:
            return Scope(self, self.engine.account(account_id))
        except ValidationError as exc:
            raise bad_request(str(exc)) from None


@dataclass(slots=True)
class Scope:
    """One request's reach: the server state and the account its path names. Every workflow and instance a handler
    touches comes through here, so it is always that account's; another account's is simply not found (404)."""

    state: ServerState
    account: Account

    async def workflow_record(self, name: str) -> WorkflowRecord:
        """The account's workflow record; 404 when the database does not know it."""
        record = await self.account.get_workflow(self.state.workflow_name(name))
        if record is None:
            raise ApiError(
                404,
                WORKFLOW_NOT_FOUND,
                f"workflow {name!r} not found in account {self.account.id!r}: create it with PUT "
                f".../accounts/{self.account.id}/workflows/{name}, or start a worker that registers it "
                "(a worker's workflows are the default account's, 'local')",
            )
        return record

    async def workflow(self, name: str) -> Workflow:
        """The binding of a workflow the account has (404 otherwise)."""
        await self.workflow_record(name)
        return self.account.workflow(name)

    async def instance(self, name: str, instance_id: str) -> tuple[WorkflowInstance, InstanceRecord]:
        """A handle and the record of an existing instance (404 for an unknown workflow or instance)."""
        wf = await self.workflow(name)
        if not ADDRESSABLE_ID.fullmatch(instance_id):
            raise bad_request(
                f"instance id {instance_id[:80]!r} is invalid: expected 1-271 letters, digits, "
                "'_', '-', ',', ' ', '*', '/' or '#'"
            )
        handle = WorkflowInstance(wf, instance_id)
        try:
            record = await handle.record()
        except InstanceNotFoundError:
            raise ApiError(
                404, INSTANCE_NOT_FOUND, f"instance {instance_id!r} not found in workflow {name!r}"
            ) from None
        return handle, record

    def terminator_running(self, name: str) -> bool:
        """Whether a terminate-by-status job is running for the account's workflow."""
        task = self.state.terminators.get((self.account.id, name))
        return task is not None and not task.done()


def state_of(request: Request) -> ServerState:
    """The server state of the app serving ``request``."""
    return cast(ServerState, request.app.state.stepstone)


def scope_of(request: Request) -> Scope:
    """The reach of ``request``: the account in its path (the default account where the path has none, as in the
    explorer API)."""
    return state_of(request).scope(request.path_params.get("account_id", DEFAULT_ACCOUNT))
