"""The S3-compatible blob store (optional): the bytes in a bucket, the ``blobs`` rows in the database as before.

Choose it with ``Engine(url, blob_store="s3://KEY:SECRET@bucket/prefix?endpoint=https://...&region=...")``
(AWS, Cloudflare R2, MinIO: any S3-compatible server, path-style). Objects are ``<prefix><instance pk>/<blob
id>``: uploaded with one PutObject up to :data:`PART_BYTES`, else as a multipart upload of 8 MiB parts (at most
two parts in memory at once), then the row is marked done.

The rows stay the truth, as in the other stores: a row is recorded before its object exists, so an object with
no row is garbage (its step was deleted: the trigger on ``steps`` removed or marked the row). Deleting,
purging or restarting therefore removes the objects right after the commit (in the background); the sweep at
open also lists the bucket's prefix and deletes objects whose row is gone, and rows no step names. A crash in
the middle of a multipart upload leaves an incomplete upload, which is no object (invisible, never served):
let the bucket's lifecycle rule ``AbortIncompleteMultipartUpload`` reclaim it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from stepstone.errors import StorageError
from stepstone.models import Lease
from stepstone.storage.blobs import CHUNK_BYTES, ORPHAN_GRACE_S
from stepstone.storage.blobs_sqlite import _ORPHANS as _SQLITE_ORPHANS
from stepstone.storage.s3_client import S3Client, S3Location

log = logging.getLogger("stepstone.storage.blobs")

PART_BYTES = 8 << 20
"""Multipart part size (S3 wants at least 5 MiB for every part but the last)."""

_PG_ORPHANS = (
    "DELETE FROM blobs b WHERE b.created_at < %s AND NOT EXISTS (SELECT 1 FROM steps s WHERE "
    "s.instance_pk = b.instance_pk AND s.key = b.step_key AND s.status = 'success' "
    "AND strpos(s.result, b.blob_id) > 0) RETURNING b.blob_id, b.instance_pk"
)


class S3BlobStore:
    """Blobs in an S3-compatible bucket, tracked by the ``blobs`` rows of a SQLite or PostgreSQL storage."""

    def __init__(self, storage: Any, location: S3Location) -> None:
        self._storage = storage
        self._sqlite = type(storage).__name__ == "SQLiteStorage"
        self.location = location
        self._s3 = S3Client(location)
        self._collector: asyncio.Task[None] | None = None
        self._pending_collect = False

    def key(self, instance_pk: int, blob_id: str) -> str:
        """The object key of a blob."""
        return f"{self.location.prefix}{instance_pk}/{blob_id}"

    # -- rows -----------------------------------------------------------------------------------------
    async def _sql(self, sqlite: str, postgres: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self._sqlite:
            rows: list[tuple[Any, ...]] = await self._storage._write(lambda c: c.execute(sqlite, params).fetchall())
            return rows

        async def op(conn: Any) -> list[tuple[Any, ...]]:
            cur = await conn.execute(postgres, params)
            return list(await cur.fetchall()) if cur.description else []

        result: list[tuple[Any, ...]] = await self._storage._run(op, single=True)
        return result

    async def _drop(self, ids: list[str]) -> None:
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ", ".join("?" * len(part))
            params = tuple(part) if self._sqlite else (part,)
            await self._sql(
                f"DELETE FROM blobs WHERE blob_id IN ({marks})", "DELETE FROM blobs WHERE blob_id = ANY(%s)", params
            )

    # -- the store ------------------------------------------------------------------------------------
    async def write(self, lease: Lease, step_key: str, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Record the row, upload the chunks (one PutObject, or a multipart upload), mark the row done."""
        blob_id = uuid.uuid4().hex
        key = self.key(lease.pk, blob_id)
        await self._sql(
            "INSERT INTO blobs (blob_id, instance_pk, step_key, state, size, created_at) "
            "VALUES (?, ?, ?, 'writing', NULL, ?)",
            "INSERT INTO blobs (blob_id, instance_pk, step_key, size, created_at) VALUES (%s, %s, %s, -1, %s)",
            (blob_id, lease.pk, step_key, time.time()),
        )
        upload_id: str | None = None
        etags: list[str] = []
        pending = bytearray()
        size = 0
        try:
            async for chunk in chunks:
                pending += chunk
                size += len(chunk)
                while len(pending) >= PART_BYTES:
                    if upload_id is None:
                        upload_id = await self._s3.start_upload(key)
                    etags.append(
                        await self._s3.upload_part(key, upload_id, len(etags) + 1, bytes(pending[:PART_BYTES]))
                    )
                    del pending[:PART_BYTES]
            if upload_id is None:
                await self._s3.put(key, bytes(pending))
            else:
                if pending:
                    etags.append(await self._s3.upload_part(key, upload_id, len(etags) + 1, bytes(pending)))
                await self._s3.finish_upload(key, upload_id, etags)
            await self._sql(
                "UPDATE blobs SET state = 'done', size = ? WHERE blob_id = ?",
                "UPDATE blobs SET size = %s WHERE blob_id = %s",
                (size, blob_id),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                if upload_id is not None:
                    await self._s3.abort_upload(key, upload_id)
                await self._s3.delete(key)
                await self._drop([blob_id])
            raise
        return blob_id, size

    async def read(self, instance_pk: int, blob_id: str) -> AsyncIterator[bytes]:
        """The object's bytes, streamed."""
        try:
            async for chunk in self._s3.get(self.key(instance_pk, blob_id), CHUNK_BYTES):
                yield chunk
        except StorageError as exc:
            raise StorageError(f"blob {blob_id} of instance {instance_pk} cannot be read: {exc}") from exc

    async def collect(self) -> int:
        """Delete the objects whose rows were deleted (SQLite: marked; PostgreSQL: gone), then those rows."""
        removed = 0
        if self._sqlite:
            rows = await self._storage._read(
                lambda c: c.execute("SELECT blob_id, instance_pk FROM blobs WHERE state = 'deleted'").fetchall()
            )
            for blob_id, pk in rows:
                await self._s3.delete(self.key(pk, blob_id))
            await self._drop([r[0] for r in rows])
            removed += len(rows)
        return removed + await self._unlisted()

    async def _unlisted(self) -> int:
        """Delete every object under the prefix whose blob has no row."""
        found: dict[str, str] = {}
        async for key in self._s3.keys(self.location.prefix):
            found[key.rsplit("/", 1)[-1]] = key
        if not found:
            return 0
        ids = list(found)
        known: set[str] = set()
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ", ".join("?" * len(part))
            if self._sqlite:
                rows = await self._storage._read(
                    lambda c, part=part, marks=marks: c.execute(
                        f"SELECT blob_id FROM blobs WHERE blob_id IN ({marks}) AND state != 'deleted'", part
                    ).fetchall()
                )
            else:
                rows = await self._sql("", "SELECT blob_id FROM blobs WHERE blob_id = ANY(%s)", (part,))
            known.update(r[0] for r in rows)
        gone = [key for blob_id, key in found.items() if blob_id not in known]
        for key in gone:
            await self._s3.delete(key)
        return len(gone)

    async def sweep(self, *, now: float, grace_s: float = ORPHAN_GRACE_S) -> int:
        """Remove rows no step names (older than ``grace_s``) with their objects, and objects with no row."""
        if self._sqlite:
            orphans = await self._storage._read(lambda c: c.execute(_SQLITE_ORPHANS, (now - grace_s,)).fetchall())
            await self._drop([r[0] for r in orphans])
        else:
            orphans = await self._sql("", _PG_ORPHANS, (now - grace_s,))
        for blob_id, pk in orphans:
            with contextlib.suppress(StorageError):
                await self._s3.delete(self.key(pk, blob_id))
        return len(orphans) + await self.collect()

    def collect_soon(self) -> None:
        """Run :meth:`collect` in the background."""
        self._pending_collect = True
        if self._collector is None or self._collector.done():
            self._collector = asyncio.get_running_loop().create_task(self._collect_while_pending())

    async def _collect_while_pending(self) -> None:
        while self._pending_collect:
            self._pending_collect = False
            try:
                await self.collect()
            except Exception:
                log.warning("removing the objects of deleted blobs failed", exc_info=True)

    async def wait_collected(self) -> None:
        """Wait for a background collect."""
        if self._collector is not None:
            await asyncio.shield(self._collector)

    async def close(self) -> None:
        """Finish the background collect, close the connections."""
        await self.wait_collected()
        await self._s3.close()
