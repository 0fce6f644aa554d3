"""One writer thread per SQLite database that group-commits.

Every write is a function of the connection. The thread takes the first pending write, drains every other
pending one, runs them all in one transaction (each inside a savepoint, so one failing write does not undo
the others) and commits once: one fsync serves every caller waiting in that batch. Futures resolve only after
the commit, so a caller's write is durable when its ``await`` returns.
"""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from stepstone.errors import StepstoneError, StorageError

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]

_STOP = object()


class Writer:
    """The write connection and the thread that owns it."""

    def __init__(
        self, connect: Callable[[], sqlite3.Connection], *, max_batch: int = 2000, ride_along_s: float = 0.02
    ) -> None:
        self._connect = connect
        self._ride_along_s = ride_along_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._max_batch = max_batch
        self._thread: threading.Thread | None = None
        self._ready: Future[None] = Future()
        self.commits = 0
        self.writes = 0

    def start(self) -> Future[None]:
        """Start the thread; the returned future resolves once the connection is open."""
        self._thread = threading.Thread(target=self._run, name="stepstone-sqlite-writer", daemon=True)
        self._thread.start()
        return self._ready

    def submit(self, op: Op, *, wait: bool = True) -> Future[Any] | None:
        """Queue a write. With ``wait`` a future resolves after its commit; otherwise it rides along."""
        fut: Future[Any] | None = Future() if wait else None
        self._queue.put((op, fut))
        return fut

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Queue a write and wait until it is committed; returns the op's result."""
        fut = self.submit(op)
        assert fut is not None
        result: T = await asyncio.wrap_future(fut)
        return result

    def stop(self) -> None:
        """Commit what is queued and stop the thread."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._ready.set_exception(exc)
            return
        self._ready.set_result(None)
        try:
            stopping = False
            while not stopping:
                batch = [self._queue.get()]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        # Writes nobody waits for (attempt starts) ride along with the next awaited
                        # write instead of paying an fsync of their own; they wait at most ride_along_s.
                        if any(item is _STOP or item[1] is not None for item in batch):
                            break
                        try:
                            batch.append(self._queue.get(timeout=self._ride_along_s))
                        except queue.Empty:
                            break
                if any(item is _STOP for item in batch):
                    stopping = True
                    batch = [item for item in batch if item is not _STOP]
                if batch:
                    self._commit(conn, batch)
        finally:
            conn.close()

    def _commit(self, conn: sqlite3.Connection, batch: list[tuple[Op, Future[Any] | None]]) -> None:
        outcomes: list[tuple[Future[Any] | None, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for op, fut in batch:
                conn.execute("SAVEPOINT w")
                try:
                    result = op(conn)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO w")
                    conn.execute("RELEASE w")
                    outcomes.append((fut, False, _translate(exc)))
                else:
                    conn.execute("RELEASE w")
                    outcomes.append((fut, True, result))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = StorageError(f"SQLite commit failed: {exc}")
            for _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_exception(error)
            return
        self.commits += 1
        self.writes += len(batch)
        for fut, ok, value in outcomes:
            if fut is None or fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, StepstoneError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, sqlite3.Error):
        return StorageError(f"SQLite error: {exc}")
    return exc
