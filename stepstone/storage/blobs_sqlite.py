"""The SQLite blob store: one file per blob in a directory beside the database, one row per blob in ``blobs``.

Layout: ``<database>.blobs/<instance pk>/<blob id>``. A write records its row first (``state = 'writing'``),
streams into ``<blob id>.tmp``, fsyncs it, renames it into place, fsyncs the directory, then marks the row
``done`` with its size. A crash at any point leaves a row no step names: never read, swept at the next open.
Deleting a step that names a blob marks its row ``deleted`` (a trigger, in the same transaction); the store
then unlinks the file and drops the row (:meth:`SQLiteBlobStore.collect`, also run at open, so a crash
between the two only delays it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from stepstone.errors import StorageError
from stepstone.models import Lease
from stepstone.storage.blobs import CHUNK_BYTES, ORPHAN_GRACE_S

if TYPE_CHECKING:
    from stepstone.storage.sqlite_core import SQLiteCore

T = TypeVar("T")
log = logging.getLogger("stepstone.storage.blobs")
Conn = sqlite3.Connection

# A done or writing blob that no successful step names (its step was re-run after a crash, or never recorded).
_ORPHANS = (
    "SELECT blob_id, instance_pk FROM blobs b WHERE b.state != 'deleted' AND b.created_at < ? AND NOT EXISTS "
    "(SELECT 1 FROM steps s WHERE s.instance_pk = b.instance_pk AND s.key = b.step_key AND s.status = 'success' "
    "AND instr(s.result, b.blob_id) > 0)"
)


class SQLiteBlobStore:
    """Blobs of a :class:`~stepstone.storage.sqlite.SQLiteStorage`, as files beside its database."""

    def __init__(self, storage: SQLiteCore) -> None:
        self._storage = storage
        self.root = os.path.abspath(storage.path) + ".blobs"
        self._collector: asyncio.Task[None] | None = None
        self._pending_collect = False

    def _dir(self, instance_pk: int) -> str:
        return os.path.join(self.root, str(instance_pk))

    def path(self, instance_pk: int, blob_id: str) -> str:
        """Where the blob's file lives."""
        return os.path.join(self._dir(instance_pk), blob_id)

    async def _write_db(self, fn: Callable[[Conn], T]) -> T:
        return await self._storage._write(fn)

    async def write(self, lease: Lease, step_key: str, chunks: AsyncIterator[bytes]) -> tuple[str, int]:
        """Record the blob's row, stream the chunks into a temporary file, rename it into place, mark it done."""
        blob_id = uuid.uuid4().hex
        pk = lease.pk
        now = time.time()
        await self._write_db(
            lambda c: c.execute(
                "INSERT INTO blobs (blob_id, instance_pk, step_key, state, size, created_at) "
                "VALUES (?, ?, ?, 'writing', NULL, ?)",
                (blob_id, pk, step_key, now),
            )
        )
        final = self.path(pk, blob_id)
        tmp = final + ".tmp"
        size = 0
        try:
            with await asyncio.to_thread(self._create, tmp) as f:
                async for chunk in chunks:
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                await asyncio.to_thread(os.fsync, f.fileno())
            await asyncio.to_thread(_rename_durably, tmp, final)
            await self._write_db(
                lambda c: c.execute("UPDATE blobs SET state = 'done', size = ? WHERE blob_id = ?", (size, blob_id))
            )
        except BaseException:
            # Leave nothing: the file goes now, the row with the next commit (a crash before: the sweep's).
            for name in (tmp, final):
                with contextlib.suppress(OSError):
                    os.unlink(name)
            self._storage._writer.submit(
                lambda c: c.execute("DELETE FROM blobs WHERE blob_id = ?", (blob_id,)), wait=False, single=True
            )
            raise
        return blob_id, size

    def _create(self, tmp: str) -> BinaryIO:
        for _ in range(10):
            os.makedirs(os.path.dirname(tmp), exist_ok=True)
            try:
                return open(tmp, "xb")
            except FileNotFoundError:  # a collect removed the (empty) directory just now: make it again
                continue
        return open(tmp, "xb")

    def collect_soon(self) -> None:
        """Run :meth:`collect` in the background (a restart returns at once: its caller must abort the old run
        before the new one starts, and the files are no part of the answer)."""
        self._pending_collect = True
        if self._collector is None or self._collector.done():
            self._collector = asyncio.get_running_loop().create_task(self._collect_while_pending())

    async def _collect_while_pending(self) -> None:
        while self._pending_collect:
            self._pending_collect = False
            try:
                await self.collect()
            except Exception:  # the next collect (or the sweep at open) removes them
                log.warning("removing the files of deleted blobs failed", exc_info=True)

    async def wait_collected(self) -> None:
        """Wait for a background :meth:`collect_soon` to finish (the storage's close does)."""
        if self._collector is not None:
            await asyncio.shield(self._collector)

    async def close(self) -> None:
        """Wait for a background collect."""
        await self.wait_collected()

    async def read(self, instance_pk: int, blob_id: str) -> AsyncIterator[bytes]:
        """The file's bytes in chunks of :data:`CHUNK_BYTES`."""
        try:
            f = await asyncio.to_thread(open, self.path(instance_pk, blob_id), "rb")
        except OSError as exc:
            raise StorageError(f"blob {blob_id} of instance {instance_pk} cannot be read: {exc}") from exc
        try:
            while True:
                chunk = await asyncio.to_thread(f.read, CHUNK_BYTES)
                if not chunk:
                    return
                yield chunk
        finally:
            f.close()

    async def collect(self) -> int:
        """Unlink the files of blobs whose steps were deleted, then drop their rows."""
        rows: list[tuple[str, int]] = await self._storage._read(
            lambda c: c.execute("SELECT blob_id, instance_pk FROM blobs WHERE state = 'deleted'").fetchall()
        )
        return await self._remove(rows)

    async def sweep(self, *, now: float, grace_s: float = ORPHAN_GRACE_S) -> int:
        """Remove blobs no step names (older than ``grace_s``) and the files of deleted ones."""
        orphans: list[tuple[str, int]] = await self._storage._read(
            lambda c: c.execute(_ORPHANS, (now - grace_s,)).fetchall()
        )
        return await self._remove(orphans) + await self.collect()

    async def _remove(self, rows: list[tuple[str, int]]) -> int:
        if not rows:
            return 0

        def unlink() -> None:
            dirs = set()
            for blob_id, pk in rows:
                for name in (self.path(pk, blob_id), self.path(pk, blob_id) + ".tmp"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name)
                dirs.add(self._dir(pk))
            for d in dirs:
                with contextlib.suppress(OSError):
                    os.rmdir(d)  # only when empty

        await asyncio.to_thread(unlink)
        ids = [r[0] for r in rows]

        def drop(c: Conn) -> None:
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                c.execute(f"DELETE FROM blobs WHERE blob_id IN ({', '.join('?' * len(part))})", part)

        await self._write_db(drop)
        return len(rows)


def _rename_durably(tmp: str, final: str) -> None:
    os.replace(tmp, final)
    fd = os.open(os.path.dirname(final), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
