"""The PostgreSQL blob store: a ``blobs`` row per blob and its bytes in ``blob_chunks`` rows of 1 MiB.

A chunk table rather than large objects: a chunk row goes with its blob row (``ON DELETE CASCADE``) and the
blob row with its step (a trigger on ``steps``), in the transaction that deletes the instance, purges it or
restarts it, so nothing is left to unlink afterwards (large objects outlive the rows that name them until
``lo_unlink`` or ``vacuumlo``); chunks are plain ``bytea`` through the same driver and pool as everything
else, and Cloudflare's own engine keeps stream outputs the same way (``streaming_step_chunks``).

A write streams every chunk inside one transaction on a connection of its own (not the pool's, which a long
write would starve): a crash or an error before its commit leaves nothing at all. A blob committed whose step
was never recorded (a crash between the two) is named by no step: never read, and swept at the next open.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import psycopg

from stepstone.errors import StorageError
from stepstone.models import Lease
from stepstone.storage.blobs import CHUNK_BYTES, ORPHAN_GRACE_S

if TYPE_CHECKING:
    from stepstone.storage.postgres_core import PostgresCore
    from stepstone.storage.postgres_writer import Conn

_ORPHANS = (
    "DELETE FROM blobs b WHERE b.created_at < %s AND NOT EXISTS (SELECT 1 FROM steps s WHERE "
    "s.instance_pk = b.instance_pk AND s.key = b.step_key AND s.status = 'success' "
    "AND strpos(s.result, b.blob_id) > 0)"
)
_READ_AHEAD = 2
"""Chunk rows fetched per query while reading (memory stays at a few MiB whatever the blob's size)."""


class PostgresBlobStore:
    """Blobs of a :class:`~stepstone.storage.postgres.PostgresStorage`, in its chunk table."""

    def __init__(self, storage: PostgresCore) -> None:
        self._storage = storage

    async def write(self, lease: Lease, step_key: str, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Insert the blob row and its chunk rows in one transaction; commit when the chunks end."""
        blob_id = uuid.uuid4().hex
        size = 0
        seq = 0
        try:
            conn = await psycopg.AsyncConnection.connect(self._storage.url, **self._storage._kwargs)
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to write a blob: {exc}") from exc
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO blobs (blob_id, instance_pk, step_key, size, created_at) VALUES (%s, %s, %s, 0, %s)",
                    (blob_id, lease.pk, step_key, time.time()),
                )
                pending = bytearray()
                async for chunk in chunks:
                    pending += chunk
                    size += len(chunk)
                    while len(pending) >= CHUNK_BYTES:
                        await _put_chunk(conn, blob_id, seq, bytes(pending[:CHUNK_BYTES]))
                        del pending[:CHUNK_BYTES]
                        seq += 1
                if pending:
                    await _put_chunk(conn, blob_id, seq, bytes(pending))
                await conn.execute("UPDATE blobs SET size = %s WHERE blob_id = %s", (size, blob_id))
        except psycopg.Error as exc:
            raise StorageError(f"writing blob {blob_id} of instance {lease.pk} failed: {exc}") from exc
        finally:
            await conn.close()
        return blob_id, size

    async def read(self, instance_pk: int, blob_id: str) -> AsyncIterator[bytes]:
        """The chunk rows in order, :data:`_READ_AHEAD` per query."""

        async def exists(conn: Conn) -> bool:
            cur = await conn.execute(
                "SELECT 1 FROM blobs WHERE blob_id = %s AND instance_pk = %s", (blob_id, instance_pk)
            )
            return await cur.fetchone() is not None

        if not await self._storage._run(exists, single=True):
            raise StorageError(f"blob {blob_id} of instance {instance_pk} cannot be read: it no longer exists")
        seq = 0
        while True:
            start = seq

            async def batch(conn: Conn, start: int = start) -> list[tuple[int, bytes]]:
                cur = await conn.execute(
                    "SELECT seq, data FROM blob_chunks WHERE blob_id = %s AND seq >= %s ORDER BY seq LIMIT %s",
                    (blob_id, start, _READ_AHEAD),
                )
                return [(int(r[0]), bytes(r[1])) for r in await cur.fetchall()]

            rows = await self._storage._run(batch, single=True)
            for n, data in rows:
                if n != seq:
                    raise StorageError(f"blob {blob_id} of instance {instance_pk} is missing chunk {seq}")
                seq += 1
                yield data
            if len(rows) < _READ_AHEAD:
                return

    async def sweep(self, *, now: float, grace_s: float = ORPHAN_GRACE_S) -> int:
        """Delete blobs no step names, older than ``grace_s`` (their chunks go with them)."""

        async def op(conn: Conn) -> int:
            cur = await conn.execute(_ORPHANS, (now - grace_s,))
            return cur.rowcount

        return int(await self._storage._run(op, single=True))

    async def collect(self) -> int:
        """Nothing to do: deleting a step deletes its blobs' rows and chunks in the same transaction."""
        return 0

    def collect_soon(self) -> None:
        """Nothing to do (see :meth:`collect`)."""

    async def wait_collected(self) -> None:
        """Nothing to wait for."""

    async def close(self) -> None:
        """Nothing to release: each write used a connection of its own, reads the storage's pool."""


async def _put_chunk(conn: psycopg.AsyncConnection[tuple[object, ...]], blob_id: str, seq: int, data: bytes) -> None:
    await conn.execute("INSERT INTO blob_chunks (blob_id, seq, data) VALUES (%s, %s, %s)", (blob_id, seq, data))
