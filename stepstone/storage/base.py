"""The storage protocol: every backend implements it, and nothing above this package sees SQL.

Accounts partition the data: a workflow's key is ``(account, name)``, an instance's ``(account, workflow, id)``,
and steps and events belong to an instance. Every method that addresses a workflow or an instance takes the
account first, so no caller can reach another account's rows by naming the same workflow or id.

Writes made on behalf of a run carry a :class:`~stepstone.models.Lease`; a backend rejects one whose token
no longer matches the instance's (the lease expired and another worker took it, or the instance was
terminated or restarted) with :class:`~stepstone.errors.FencedError`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from stepstone.models import (
    Claim,
    EventRecord,
    HistoryEvent,
    InstanceLinks,
    InstanceRecord,
    InstanceVersion,
    Lease,
    LeaseState,
    NewEvent,
    NewInstance,
    StepRecord,
    StepRef,
    VersionRecord,
    WorkflowRecord,
)
from stepstone.storage.bell import StreamWaiter
from stepstone.storage.blobs import BlobStore

SCHEMA_VERSION = 1


@dataclass(slots=True)
class InstancePage:
    """A page of instances and the total that matched."""

    items: list[InstanceRecord]
    total: int


ROLLING_BACK: Final = (
    "status NOT IN ('complete', 'errored', 'terminated') AND (EXISTS (SELECT 1 FROM events e WHERE "
    "e.instance_pk = instances.pk AND e.type = 'stepstone/rollback' AND e.consumed_by IS NULL) OR EXISTS "
    "(SELECT 1 FROM steps s WHERE s.instance_pk = instances.pk AND s.kind = 'rollback' "
    "AND s.status NOT IN ('success', 'error')))"
)
"""SQL (both backends) of the instances REST calls ``rollingBack``: not finished, and a terminate's rollback
request pending (``models.ROLLBACK_EVENT``) or an undo handler running; ``list_instances(status="rollingBack")``."""


def instance_filter(
    account: str,
    workflow: str,
    status: str | None,
    created_after: float | None,
    created_before: float | None,
    mark: str = "%s",
) -> tuple[str, list[object], str | None]:
    """The ``WHERE`` of a list of the account's workflow's instances with its parameters (placeholders ``mark``),
    and the stored status it filters by: ``rollingBack`` is no stored status but a condition (:data:`ROLLING_BACK`)."""
    where = [f"account = {mark}", f"workflow = {mark}"]
    params: list[object] = [account, workflow]
    if status == "rollingBack":
        where.append(ROLLING_BACK)
        status = None
    for clause, value in (
        (f"status = {mark}", status),
        (f"created_on >= {mark}", created_after),
        (f"created_on <= {mark}", created_before),
    ):
        if value is not None:
            where.append(clause)
            params.append(value)
    return " AND ".join(where), params, status


def page_window(total: int, limit: int, offset: int, newest_first: bool) -> tuple[bool, int, int, bool]:
    """How to read rows ``offset`` … ``offset + limit`` of ``total``: ``(newest_first, limit, offset, reverse)``.

    A page past the middle is read in the opposite order from the other end (then ``reverse`` the rows), so the
    database skips at most half the rows: the last page of a million costs what the first does.
    """
    if offset <= total // 2 or offset >= total:
        return newest_first, limit, offset, False
    n = min(limit, total - offset)
    return not newest_first, n, total - offset - n, True


@dataclass(slots=True)
class ClaimResult:
    """Instances claimed, and when the next not-yet-due instance becomes runnable."""

    claims: list[Claim]
    next_due: float | None
    takeovers: int = 0
    """How many of the claims took an instance over from a worker whose lease had expired."""


def redact_url(url: str) -> str:
    """A database URL fit for messages: its password, if any, replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not at or ":" not in creds:
        return url
    return f"{scheme}{sep}{creds.split(':', 1)[0]}:***@{host}"


def concurrency_limit(config: str) -> int | None:
    """A workflow's ``{"concurrency": {"limit": N}}`` from its config JSON: at most N instances of it run at
    once across all workers (waiting ones do not count); None when unset or malformed."""
    try:
        value = json.loads(config or "{}").get("concurrency", {}).get("limit")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class Storage(Protocol):
    """What the engine needs from a database."""

    url: str

    @property
    def blobs(self) -> BlobStore:
        """Where step outputs too large for a JSON result are streamed (:mod:`stepstone.storage.blobs`)."""
        ...

    async def open(self) -> None:
        """Connect, create or check the schema."""
        ...

    async def close(self) -> None:
        """Flush pending writes and disconnect."""
        ...

    async def subscribe(self, on_signal: Callable[[int, str], None]) -> None:
        """Call ``on_signal(pk, kind)`` when another process touches an instance: ``new`` (pk 0 for a
        create: something may be runnable), ``pause``, ``resume``, ``abort`` (terminate, restart, delete).

        Returns at once; backends without cross-process signals do nothing (workers poll).
        """
        ...

    # -- workflows ------------------------------------------------------------------------------------
    async def put_workflow(self, record: WorkflowRecord, *, graph: str | None = None) -> WorkflowRecord:
        """Create or update a workflow of ``record.account``; keeps ``created_on``. A change of class, script,
        config or ``version_id`` makes ``record.version_id`` the current version and records it (with its
        diagram ``graph``, JSON, or the previous version's when None and the class is the same)."""
        ...

    async def list_versions(self, account: str, workflow: str) -> list[VersionRecord]:
        """The workflow's versions, the one that most recently became current first."""
        ...

    async def get_version(self, account: str, workflow: str, version_id: str) -> VersionRecord | None:
        """One version of the workflow, or None."""
        ...

    async def record_version_run(
        self, lease: Lease, version_id: str, *, now: float, divergence: str | None = None
    ) -> None:
        """Record that ``version_id`` ran the leased instance, with how its replay diverged (JSON) if it did;
        a divergence once recorded stays. Raises FencedError when the lease is gone."""
        ...

    async def instance_versions(self, pk: int) -> list[InstanceVersion]:
        """The versions recorded by :meth:`record_version_run` for the instance, in the order they first ran it."""
        ...

    async def get_workflow(self, account: str, name: str) -> WorkflowRecord | None:
        """One workflow of the account, or None."""
        ...

    async def list_workflows(self, account: str | None) -> list[WorkflowRecord]:
        """The account's workflows (every account's for None), oldest first."""
        ...

    async def delete_workflow(self, account: str, name: str) -> bool:
        """Delete a workflow of the account and all its instances; False if it did not exist."""
        ...

    async def count_by_status(self, account: str, workflow: str) -> dict[str, int]:
        """How many instances of the account's workflow are in each status."""
        ...

    async def count_queued(self, account: str, workflow: str) -> int:
        """How many instances of the account's workflow are ``queued`` (an index range count: the queued ones
        only, however many finished instances the workflow has)."""
        ...

    # -- instances ------------------------------------------------------------------------------------
    async def create_instances(self, rows: Sequence[NewInstance], *, skip_existing: bool) -> list[InstanceRecord]:
        """Insert instances (each in its ``account``), runnable now. An existing id raises InstanceExistsError,
        or is skipped. A row with a ``parent_pk`` is linked to that parent in the same transaction."""
        ...

    async def get_instance(self, account: str, workflow: str, instance_id: str) -> InstanceRecord | None:
        """One instance of the account's workflow, or None."""
        ...

    async def list_instances(
        self,
        account: str,
        workflow: str,
        *,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = True,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> InstancePage:
        """A page of the account's workflow's instances, by creation time."""
        ...

    async def instance_links(self, pk: int) -> InstanceLinks:
        """The instance's parent and children (``step.run_workflow``), each with its status now."""
        ...

    async def load_history(self, pk: int) -> tuple[list[StepRecord], list[EventRecord]]:
        """The instance's steps (by first start) and its unconsumed events (oldest first), in one read."""
        ...

    # -- the instance event stream --------------------------------------------------------------------
    async def read_stream(
        self, account: str, workflow: str, instance_id: str, *, after: int, limit: int
    ) -> tuple[InstanceRecord, list[HistoryEvent]]:
        """The instance and up to ``limit`` of its recorded events with ids above ``after``, oldest first, each
        joined with its step as stored now, in one read. Raises InstanceNotFoundError."""
        ...

    def stream_waiter(self, pk: int) -> StreamWaiter:
        """Wake-ups for a reader of instance ``pk``'s stream: rung when an event of it may have been committed
        (by this process at once; by another within the backend's signal latency). Close it when done."""
        ...

    # -- the worker's side ----------------------------------------------------------------------------
    async def claim(
        self,
        *,
        owner: str,
        now: float,
        lease_seconds: float,
        limit: int,
        workflows: Sequence[str],
        account_concurrency: int | None = None,
    ) -> ClaimResult:
        """Lease up to ``limit`` runnable instances of these workflows, in every account, earliest due first.

        A workflow (of one account) whose config sets a concurrency limit (:func:`concurrency_limit`) never has
        more than that many instances ``running`` or ``waitingForPause`` under live leases, counted across all workers;
        with ``account_concurrency``, neither has an account over all its workflows.
        """
        ...

    async def renew(self, *, leases: Sequence[Lease], until: float) -> dict[int, LeaseState]:
        """Extend leases (never shorten one: a renewal sent before a later one may arrive after it); report for
        each whether it is still held and the instance's status."""
        ...

    async def release(self, lease: Lease) -> bool:
        """Give a lease up: its instance can be claimed at once. Fenced: False (and no change) when the lease is
        no longer this one."""
        ...

    def renew_blocking(self, leases: Sequence[Lease], *, until: float) -> set[int]:
        """Extend leases from a thread other than the event loop's, on a connection of its own (the loop
        watchdog renews with it while the loop is blocked); returns the pks whose lease is still held."""
        ...

    async def release_owners(self, owners: Sequence[str]) -> int:
        """Expire the leases of workers known to be dead, so their instances can be claimed now."""
        ...

    async def lease_owners(self) -> list[str]:
        """The distinct owners of live leases."""
        ...

    def put_step(
        self, lease: Lease, step: StepRecord, *, durable: bool, events: Sequence[NewEvent] = ()
    ) -> Awaitable[None]:
        """Insert or replace a step, with the instance events it adds, in one transaction. ``durable=False``
        queues the write into the next commit."""
        ...

    async def consume_event(
        self, lease: Lease, step: StepRecord, event_pk: int, *, events: Sequence[NewEvent] = ()
    ) -> None:
        """Record a wait step's result and mark the event it consumed, atomically (with the step's events)."""
        ...

    async def suspend(
        self, lease: Lease, *, now: float, wake_at: float | None, waiting_for: str, wait_types: Sequence[str]
    ) -> str:
        """Hibernate the instance: release the lease; runnable again at ``wake_at`` or on a matching event.

        A pause requested meanwhile makes it ``paused``. Returns the new status.
        """
        ...

    async def pause_drained(self, lease: Lease, *, now: float) -> None:
        """Record that a pausing instance has drained its in-flight steps: it is now ``paused``."""
        ...

    async def finish(
        self,
        lease: Lease,
        *,
        now: float,
        status: str,
        output: str | None,
        error_name: str | None,
        error_message: str | None,
        retention_ms: float,
        error_traceback: str | None = None,
    ) -> None:
        """End the instance: complete or errored (with the traceback it errored with), or terminated after a
        terminate's rollback (consuming its request), and release the lease."""
        ...

    # -- lifecycle control ----------------------------------------------------------------------------
    async def pause(self, account: str, workflow: str, instance_id: str, *, now: float) -> InstanceRecord:
        """Running → waitingForPause; waiting or queued → paused; otherwise unchanged."""
        ...

    async def resume(self, account: str, workflow: str, instance_id: str, *, now: float) -> InstanceRecord:
        """waitingForPause → running; paused → queued with every timer shifted by the paused time."""
        ...

    async def terminate(
        self, account: str, workflow: str, instance_id: str, *, now: float, retention_ms: float, rollback: bool = False
    ) -> InstanceRecord:
        """Stop the instance now; refuses a finished one with InvalidStateError.

        With ``rollback``: leave a rollback request (an event of type ``ROLLBACK_EVENT``) and make the instance
        ``queued`` under a new generation (a run in flight is fenced off), so the next run replays it, runs its
        undo handlers and ends it ``terminated`` (``finish`` with that status consumes the request)."""
        ...

    async def restart(
        self, account: str, workflow: str, instance_id: str, *, now: float, from_step: StepRef | None
    ) -> InstanceRecord:
        """Run again from the start (all history erased) or from a named step (that step and later ones)."""
        ...

    async def send_event(
        self, account: str, workflow: str, instance_id: str, *, event_type: str, payload: str, now: float
    ) -> EventRecord:
        """Buffer an event; an instance waiting for its type becomes runnable."""
        ...

    async def delete_instances(self, account: str, workflow: str, ids: Sequence[str]) -> list[str]:
        """Delete instances and all their state; returns the ids that existed."""
        ...

    async def purge_expired(self, *, now: float) -> int:
        """Delete finished instances past their retention; returns how many."""
        ...
