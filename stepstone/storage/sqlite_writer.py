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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

from stepstone.errors import StepstoneError, StorageError, StorageUnavailableError

T = TypeVar("T")
Op = Callable[[sqlite3.Connection], Any]


class _Settable(Protocol):
    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


Item = tuple[Op, "_Settable | None", bool]

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
        self.on_commit: Callable[[], None] | None = None
        """Called (on the writer's thread) after each successful commit."""

    def start(self) -> Future[None]:
        """Start the thread; the returned future resolves once the connection is open."""
        self._thread = threading.Thread(target=self._run, name="stepstone-sqlite-writer", daemon=True)
        self._thread.start()
        return self._ready

    def submit(self, op: Op, *, wait: bool = True, single: bool = False) -> Future[Any] | None:
        """Queue a write. With ``wait`` a future resolves after its commit; otherwise it rides along.

        ``single`` marks an op that writes at most one statement after its checks, so it needs no savepoint.
        """
        fut: Future[Any] | None = Future() if wait else None
        self._queue.put((op, fut, single))
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

    def _commit(self, conn: sqlite3.Connection, batch: list[Item]) -> None:
        if commit_batch(conn, batch):
            self.commits += 1
            self.writes += len(batch)
            if self.on_commit is not None:
                self.on_commit()


_UNAVAILABLE = frozenset({sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_BUSY})
"""Primary result codes of failures that can pass (disk full, I/O error, a lock held too long)."""


def storage_error(exc: sqlite3.Error, what: str = "SQLite error") -> StorageError:
    """Our error for a driver error: :class:`StorageUnavailableError` when it can pass (``SQLITE_FULL``...)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _UNAVAILABLE:
        return StorageUnavailableError(f"{what}: {exc}")
    return StorageError(f"{what}: {exc}")


def _translate(exc: BaseException) -> BaseException:
    if isinstance(exc, StepstoneError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, sqlite3.Error):
        return storage_error(exc)
    return exc


Outcome = tuple["_Settable | None", bool, Any]


def run_ops(conn: sqlite3.Connection, batch: list[Item]) -> list[Outcome]:
    """Run every op of the batch inside the open transaction; each op's result or error, not yet settled.

    Each op runs inside a savepoint (unless it is marked single), so one failing op does not undo the others.
    """
    outcomes: list[Outcome] = []
    for op, fut, single in batch:
        if single:
            try:
                outcomes.append((fut, True, op(conn)))
            except BaseException as exc:
                outcomes.append((fut, False, _translate(exc)))
            continue
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
    return outcomes


def settle(outcomes: list[Outcome]) -> None:
    """Resolve each op's future after its transaction committed."""
    for fut, ok, value in outcomes:
        if fut is None or fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def fail(conn: sqlite3.Connection, batch: list[Item], exc: BaseException) -> None:
    """The transaction failed: roll back and give every waiting future a StorageError."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    error = (
        storage_error(exc, "SQLite commit failed")
        if isinstance(exc, sqlite3.Error)
        else StorageError(f"SQLite commit failed: {exc}")
    )
    for _, fut, _ in batch:
        if fut is not None and not fut.done():
            fut.set_exception(error)


def commit_batch(conn: sqlite3.Connection, batch: list[Item]) -> bool:
    """Run the batch in one transaction, commit once, then settle; False if the transaction failed."""
    try:
        conn.execute("BEGIN IMMEDIATE")
        outcomes = run_ops(conn, batch)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        fail(conn, batch, exc)
        return False
    settle(outcomes)
    return True


class LoopWriter:
    """Group commit driven from the event loop, with the fsync off the loop.

    Writes queued during one pass of the event loop are run by one callback scheduled with ``call_soon``,
    after every ready task has had its turn, in one transaction on the loop's thread (no hand-off per write);
    the COMMIT (the fsync) runs on a helper thread while the loop goes on and the next batch builds up. At most
    one commit is in flight. When another process holds SQLite's write lock the batch is retried a moment
    later instead of blocking the loop.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        *,
        ride_along_s: float = 0.02,
        max_batch: int = 5000,
    ) -> None:
        self._connect = connect
        self._ride_along_s = ride_along_s
        self._max_batch = max_batch
        self._conn: sqlite3.Connection | None = None
        self._pending: list[Item] = []
        self._now_handle: asyncio.Handle | None = None
        self._later_handle: asyncio.TimerHandle | None = None
        self._busy_backoff = 0.0
        self._committing = False
        self._committer: ThreadPoolExecutor | None = None
        self.commits = 0
        self.writes = 0
        self.on_commit: Callable[[], None] | None = None
        """Called on the event loop after each successful commit."""

    def start(self) -> None:
        """Open the write connection (and migrate) on the calling thread, the event loop's."""
        self._conn = self._connect()
        self._conn.execute("PRAGMA busy_timeout = 0")
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepstone-sqlite-commit")

    def submit(self, op: Op, *, wait: bool = True, single: bool = False) -> asyncio.Future[Any] | None:
        """Queue a write into the next commit; with ``wait`` a future resolves after that commit."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] | None = loop.create_future() if wait else None
        self._pending.append((op, fut, single))
        if wait or len(self._pending) >= self._max_batch:
            self._schedule(loop)
        elif self._later_handle is None and self._now_handle is None:
            self._later_handle = loop.call_later(self._ride_along_s, self._flush)
        return fut

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._now_handle is None and self._busy_backoff == 0.0 and not self._committing:
            self._now_handle = loop.call_soon(self._flush)

    async def run(self, op: Callable[[sqlite3.Connection], T]) -> T:
        """Queue a write and wait until it is committed; returns the op's result."""
        fut = self.submit(op)
        assert fut is not None
        result: T = await fut
        return result

    def _flush(self) -> None:
        self._now_handle = None
        if self._later_handle is not None:
            self._later_handle.cancel()
            self._later_handle = None
        conn = self._conn
        if not self._pending or conn is None or self._committing:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            # Another process is writing: try again shortly rather than block the event loop.
            self._busy_backoff = min(max(self._busy_backoff * 2, 0.001), 0.05)
            self._later_handle = asyncio.get_running_loop().call_later(self._busy_backoff, self._retry)
            return
        self._busy_backoff = 0.0
        batch, self._pending = self._pending, []
        try:
            outcomes = run_ops(conn, batch)
        except sqlite3.Error as exc:
            fail(conn, batch, exc)
            return
        loop = asyncio.get_running_loop()
        if not getattr(loop, "_ready", True):
            # Nothing else is ready to run on the loop: commit here and save the hand-off to the thread.
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                fail(conn, batch, exc)
                return
            self.commits += 1
            self.writes += len(batch)
            settle(outcomes)
            if self.on_commit is not None:
                self.on_commit()
            return
        self._committing = True
        assert self._committer is not None
        commit = loop.run_in_executor(self._committer, conn.execute, "COMMIT")
        commit.add_done_callback(lambda done: self._committed(done, conn, batch, outcomes))

    def _committed(
        self, done: asyncio.Future[Any], conn: sqlite3.Connection, batch: list[Item], outcomes: list[Outcome]
    ) -> None:
        self._committing = False
        exc = done.exception()
        if exc is not None:
            fail(conn, batch, exc)
        else:
            self.commits += 1
            self.writes += len(batch)
            settle(outcomes)
            if self.on_commit is not None:
                self.on_commit()
        if self._pending and self._conn is not None:
            self._schedule(asyncio.get_running_loop())

    def _retry(self) -> None:
        self._later_handle = None
        self._flush()

    async def stop(self) -> None:
        """Commit what is pending (waiting for other processes' locks) and close the connection."""
        while self._committing:
            await asyncio.sleep(0.001)
        conn, self._conn = self._conn, None
        if conn is None:
            return
        for handle in (self._now_handle, self._later_handle):
            if handle is not None:
                handle.cancel()
        if self._pending:
            conn.execute("PRAGMA busy_timeout = 30000")
            batch, self._pending = self._pending, []
            if commit_batch(conn, batch) and self.on_commit is not None:
                self.on_commit()
        conn.close()
        if self._committer is not None:
            self._committer.shutdown(wait=True)
