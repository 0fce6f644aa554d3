"""The blob store: step outputs too large for a JSON result, streamed in and out in chunks, never held whole.

Each backend keeps blobs beside its database: SQLite in a directory next to the file
(:mod:`stepstone.storage.blobs_sqlite`), PostgreSQL in a chunk table (:mod:`stepstone.storage.blobs_postgres`).
A blob row names the instance and the step key it was written for; a blob counts (and is served) only once a
step result names it (``{"$blob": {"id", "size"}}``, :class:`stepstone.codec.BlobRef`):

- a crash in the middle of a write leaves a blob no step names: it is never read, and :meth:`BlobStore.sweep`
  removes it when the store opens (after :data:`ORPHAN_GRACE_S`, so a write still running elsewhere is spared);
- deleting a step row (deleting or purging its instance, restarting it) deletes its blobs, through a trigger
  on ``steps`` in the same transaction (SQLite: the row is marked and its file unlinked right after).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from stepstone.models import Lease

CHUNK_BYTES = 1 << 20
"""How much a read returns at a time, and the size of the chunk rows on PostgreSQL."""

ORPHAN_GRACE_S = 3600.0
"""How old a blob no step names must be before the sweep removes it (a write may still be running)."""


class BlobStore(Protocol):
    """Where streamed step outputs live."""

    async def write(self, lease: Lease, step_key: str, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Stream ``chunks`` into a new blob of the lease's instance, for step ``step_key``.

        Returns:
            ``(blob id, size in bytes)``; the blob is durable when this returns. If ``chunks`` raises (or
            the write fails or is cancelled), nothing of the blob is left behind and the error propagates.
        """
        ...

    def read(self, instance_pk: int, blob_id: str) -> AsyncIterator[bytes]:
        """The blob's bytes from the start, in chunks of at most :data:`CHUNK_BYTES`.

        Raises:
            StorageError: the blob is missing (its instance was deleted meanwhile).
        """
        ...

    async def sweep(self, *, now: float, grace_s: float = ORPHAN_GRACE_S) -> int:
        """Remove blobs no step names that are older than ``grace_s`` seconds, and (SQLite) the files of
        deleted ones; returns how many were removed."""
        ...

    async def collect(self) -> int:
        """Remove what deleting steps left to remove outside the database (files, objects); returns how many."""
        ...

    def collect_soon(self) -> None:
        """Run :meth:`collect` in the background (after a delete, a purge, a restart)."""
        ...

    async def wait_collected(self) -> None:
        """Wait until a background :meth:`collect_soon` is done."""
        ...

    async def close(self) -> None:
        """Finish background work and release connections (the storage's ``close`` calls it)."""
        ...
