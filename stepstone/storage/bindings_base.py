"""What the KV and Queues bindings need from the project's database: :class:`BindingStore`.

The tables live beside the engine's, in the same database, with their own schema version (``bindings_schema``
in ``stepstone_meta``), so adding them never changes the engine's schema version. Both backends implement the
protocol; :func:`stepstone.storage.binding_store` picks the one for a storage.

Queue messages are leased like instances: a claim hides a message until ``visible_at`` (``now + lease``) and
gives it a fresh ``lease_token``; ack and retry carry the token, so a consumer whose lease lapsed (it was slow,
or it died and another took the message over) can no longer ack or retry it. On PostgreSQL claims use
``FOR UPDATE SKIP LOCKED``, so several workers share a queue without waiting on each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

BINDINGS_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class KVEntry:
    """One stored KV pair; ``expiration`` is in epoch seconds (None: never)."""

    key: str
    value: bytes
    metadata: str | None
    """The metadata as JSON text, or None."""
    expiration: float | None


@dataclass(frozen=True, slots=True)
class KVKey:
    """A key as ``list`` shows it."""

    name: str
    expiration: float | None
    metadata: str | None


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A message to enqueue."""

    id: str
    body: bytes
    content_type: str
    """``json``, ``text``, ``bytes`` or ``v8`` (stepstone's codec)."""
    delay_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class QueueMessageRecord:
    """A claimed message: its attempts count this delivery."""

    id: str
    queue: str
    body: bytes
    content_type: str
    sent_at: float
    attempts: int
    lease_token: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a consumer decided for one claimed message: ``ack``, or ``retry`` after ``delay_seconds``."""

    id: str
    lease_token: str
    action: str
    delay_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class SettleOutcome:
    """How many of a batch's messages were deleted, put back, moved to the dead-letter queue or dropped (retries
    exhausted without one), and how many were no longer ours (the lease lapsed)."""

    acked: int = 0
    retried: int = 0
    dead_lettered: int = 0
    dropped: int = 0
    lost: int = 0


class BindingStore(Protocol):
    """KV pairs and queue messages in the project's database."""

    async def ensure_schema(self) -> None:
        """Create the binding tables if missing (idempotent, safe from several processes)."""
        ...

    # -- KV -----------------------------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str, *, now: float) -> KVEntry | None:
        """The live (unexpired) entry, or None."""
        ...

    async def kv_put(self, namespace: str, entry: KVEntry) -> None:
        """Insert or replace an entry."""
        ...

    async def kv_delete(self, namespace: str, key: str) -> None:
        """Delete an entry (nothing if missing)."""
        ...

    async def kv_list(
        self, namespace: str, *, prefix: str, after: str | None, limit: int, now: float
    ) -> tuple[list[KVKey], bool]:
        """Up to ``limit`` live keys starting with ``prefix`` and above ``after``, in UTF-8 byte order; and
        whether more follow."""
        ...

    async def kv_purge_expired(self, *, now: float) -> int:
        """Delete every expired entry; returns how many."""
        ...

    # -- Queues -------------------------------------------------------------------------------------
    async def queue_send(self, queue: str, messages: Sequence[NewMessage], *, now: float) -> None:
        """Enqueue messages, visible after their delay, in one transaction."""
        ...

    async def queue_ready(self, queue: str, *, now: float, limit: int) -> tuple[int, float | None]:
        """How many messages (at most ``limit``) could be claimed now, and since when the oldest of them has
        been visible (None when there is none)."""
        ...

    async def queue_claim(
        self, queue: str, *, now: float, limit: int, lease_seconds: float, token: str
    ) -> list[QueueMessageRecord]:
        """Lease up to ``limit`` visible messages, oldest first, counting an attempt on each."""
        ...

    async def queue_renew(self, ids: Sequence[str], *, token: str, until: float) -> int:
        """Keep claimed messages hidden until ``until``; returns how many are still ours."""
        ...

    async def queue_settle(
        self,
        queue: str,
        settlements: Sequence[Settlement],
        *,
        now: float,
        max_retries: int,
        dead_letter_queue: str | None,
    ) -> SettleOutcome:
        """Ack (delete) or retry messages in one transaction. A retry of a message already delivered more than
        ``max_retries`` times moves it to ``dead_letter_queue`` (attempts reset), or deletes it without one."""
        ...

    async def queue_depth(self, queue: str) -> int:
        """How many messages the queue holds (visible or not)."""
        ...

    # -- once ---------------------------------------------------------------------------------------
    async def claim_once(self, key: str, *, now: float, expires_at: float) -> bool:
        """True for exactly one caller per ``key`` (across processes) until ``expires_at`` has passed: an insert
        if absent, or a takeover of an expired row. For "fire once" jobs such as a cron minute's handler."""
        ...
