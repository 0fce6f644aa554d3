"""The SQLite backend's core: the file, its connections, the group-committing writer, the readers, and the
instance event stream with its cross-process signals (:class:`SQLiteCore`, the base of
:class:`~stepstone.storage.sqlite.SQLiteStorage`)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from stepstone.errors import (
    InstanceNotFoundError,
    StorageError,
)
from stepstone.models import (
    HistoryEvent,
    InstanceRecord,
)
from stepstone.storage import sqlite_control as control
from stepstone.storage.bell import Bell, StreamWaiter
from stepstone.storage.blobs import BlobStore
from stepstone.storage.blobs_sqlite import SQLiteBlobStore
from stepstone.storage.blocking_renew import BlockingRenewer
from stepstone.storage.sqlite_schema import (
    INSTANCE_COLUMNS,
    instance_from_row,
    migrate,
)
from stepstone.storage.sqlite_wal import preallocate_wal
from stepstone.storage.sqlite_writer import LoopWriter, Writer
from stepstone.storage.stream_sql import STREAM_EVENTS, first_row, history_events

T = TypeVar("T")
Conn = sqlite3.Connection


class SQLiteCore:
    """The file, its connections and writer, the event stream (the base of :class:`SQLiteStorage`).

    Args:
        path: the database file; its directory is created if missing.
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` (the default) survives power loss.
        readers: how many reader threads (each with its own connection), in ``thread`` mode.
        mode: ``loop`` (the default) runs reads and group commits on the event loop's thread, with no
            thread hand-offs; ``thread`` gives writes a thread of their own and reads a thread pool.
    """

    purge_batch = 100
    """Instances the retention purge deletes per statement."""
    purge_budget_s = 0.005
    """Time the retention purge may hold the writer per write before other writes commit."""

    wal_preallocation = True
    """Grow the WAL to its checkpoint size when the writer connects (see :mod:`stepstone.storage.sqlite_wal`)."""

    def __init__(self, path: str, *, synchronous: str = "FULL", readers: int = 2, mode: str = "loop") -> None:
        if mode not in ("loop", "thread"):
            raise ValueError(f"SQLite storage mode must be 'loop' or 'thread', got {mode!r}")
        self.path = path
        self.url = f"sqlite:///{path}"
        self._synchronous = synchronous
        self._writer: Writer | LoopWriter = (
            LoopWriter(self._connect_writer) if mode == "loop" else Writer(self._connect_writer)
        )
        self._loop_reader: Conn | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._own_signals: set[int] = set()
        self.signal_poll_s = 0.01
        self._bell = Bell()
        self._bell.on_first_waiter = self._watch_stream
        self._stream_watcher: asyncio.Task[None] | None = None
        self._touched: list[int] = []
        self._writer.on_commit = self._committed
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="stepstone-sqlite-read")
        self._local = threading.local()
        self._reader_conns: list[Conn] = []
        self._lock = threading.Lock()
        self._renewer = BlockingRenewer("sqlite", self._connect_renewer)
        self.blobs: BlobStore = SQLiteBlobStore(self)
        """Streamed step outputs, as files beside the database (:mod:`stepstone.storage.blobs_sqlite`)."""
        self._open = False

    # -- connections ----------------------------------------------------------------------------------
    def _connect(self) -> Conn:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
        return conn

    def _connect_renewer(self) -> Conn:
        conn = self._connect()
        conn.execute("PRAGMA busy_timeout = 1000")  # the watchdog's thread: wait for another writer briefly
        return conn

    def _connect_writer(self) -> Conn:
        conn = self._connect()
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            migrate(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            conn.close()
            raise
        if self.wal_preallocation:
            preallocate_wal(conn, self.path, self._synchronous)
        return conn

    def _reader(self) -> Conn:
        conn: Conn | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(self, fn: Callable[[Conn], T]) -> T:
        if self._loop_reader is not None:
            try:
                return fn(self._loop_reader)
            except sqlite3.Error as exc:
                raise StorageError(f"SQLite error: {exc}") from exc

        def call() -> T:
            try:
                return fn(self._reader())
            except sqlite3.Error as exc:
                raise StorageError(f"SQLite error: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._readers, call)

    async def _write(self, fn: Callable[[Conn], T]) -> T:
        return await self._writer.run(fn)

    async def open(self) -> None:
        """Create the directory and schema, start the writer."""
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        try:
            if isinstance(self._writer, LoopWriter):
                self._writer.start()
                self._loop_reader = self._connect()
                self._loop_reader.execute("PRAGMA query_only = ON")
            else:
                await asyncio.wrap_future(self._writer.start())
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {self.path!r}: {exc}") from exc
        self._open = True
        await self.blobs.sweep(now=time.time())

    async def close(self) -> None:
        """Commit queued writes, stop the threads, close connections."""
        if not self._open:
            return
        await self.blobs.close()
        self._open = False
        if self._stream_watcher is not None:
            self._stream_watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream_watcher
            self._stream_watcher = None
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
            self._watcher = None
        if isinstance(self._writer, LoopWriter):
            await self._writer.stop()
            if self._loop_reader is not None:
                self._loop_reader.close()
                self._loop_reader = None
        else:
            await asyncio.to_thread(self._writer.stop)
        self._readers.shutdown(wait=True)
        self._renewer.close()
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    # -- the instance event stream --------------------------------------------------------------------
    def _committed(self) -> None:
        if self._touched:
            touched, self._touched = self._touched, []
            self._bell.ring(touched)

    def _watch_stream(self) -> None:
        if self._open and (self._stream_watcher is None or self._stream_watcher.done()):
            self._stream_watcher = asyncio.create_task(self._poll_stream(), name="stepstone-sqlite-stream")

    async def _poll_stream(self) -> None:
        """While anyone reads a stream, look every ``signal_poll_s`` whether another connection (another process,
        or this one's writer) committed: ``PRAGMA data_version`` of a connection of the poll's own (event ids are
        per instance, so no one id tells that events were added)."""
        last = None
        conn: Conn | None = None
        try:
            while self._open and self._bell.waiting:
                try:
                    if conn is None:
                        conn = self._connect()
                    version = conn.execute("PRAGMA data_version").fetchone()[0]
                except sqlite3.Error:
                    version = None
                if last is not None and version != last:
                    self._bell.ring(None)
                last = version
                await asyncio.sleep(self.signal_poll_s)
        finally:
            if conn is not None:
                conn.close()

    async def read_stream(
        self, account: str, workflow: str, instance_id: str, *, after: int, limit: int
    ) -> tuple[InstanceRecord, list[HistoryEvent]]:
        """The instance and its events after ``after``, in one read transaction."""

        def read(c: Conn) -> tuple[InstanceRecord, list[HistoryEvent]]:
            c.execute("BEGIN")
            try:
                row = c.execute(
                    f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE account = ? AND workflow = ? AND id = ?",
                    (account, workflow, instance_id),
                ).fetchone()
                if row is None:
                    raise InstanceNotFoundError(f"instance {instance_id!r} not found in workflow {workflow!r}")
                inst = instance_from_row(row)
                rows = c.execute(STREAM_EVENTS.replace("%s", "?"), (inst.pk, first_row(after), limit)).fetchall()
            finally:
                c.execute("COMMIT")
            return inst, [event for r in rows for event in history_events(r, after)]

        return await self._read(read)

    def stream_waiter(self, pk: int) -> StreamWaiter:
        """Wake-ups when this process commits an event of ``pk``, or any process adds events."""
        return self._bell.waiter(pk)

    async def subscribe(self, on_signal: Callable[[int, str], None]) -> None:
        """Deliver other processes' control operations on this file (created, event, pause, resume, abort).

        Control operations append to the ``signals`` table in their own transaction; a watcher reads what is
        new every ``signal_poll_s`` (one indexed read of a tiny table), skipping this process's own.
        """
        start = await self._read(lambda c: c.execute("SELECT COALESCE(MAX(seq), 0) FROM signals").fetchone()[0])
        self._watcher = asyncio.create_task(self._watch(on_signal, int(start)), name="stepstone-sqlite-signals")

    async def _watch(self, on_signal: Callable[[int, str], None], seen: int) -> None:
        while self._open:
            await asyncio.sleep(self.signal_poll_s)
            try:
                rows = await self._read(functools.partial(control.signals_after, after=seen))
            except StorageError:
                continue
            for seq, pk, kind in rows:
                seen = seq
                if seq in self._own_signals:
                    self._own_signals.discard(seq)
                    continue
                on_signal(pk, kind)

    def _signal(self, conn: Conn, pk: int, kind: str, now: float) -> None:
        if pk:
            self._touched.append(pk)  # its status (so its stream) may have changed
        seq = conn.execute("INSERT INTO signals (instance_pk, kind, at) VALUES (?, ?, ?)", (pk, kind, now)).lastrowid
        if seq is not None and self._watcher is not None:
            self._own_signals.add(seq)

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(commits, writes) made by the writer so far: writes per commit shows group commit at work."""
        return self._writer.commits, self._writer.writes
