"""The SQLite backend: WAL, ``synchronous=FULL``, one group-committing writer, pooled readers.

Several processes on one host may share the file: writes take SQLite's write lock (``BEGIN IMMEDIATE``), and
claims, leases and fencing work exactly as on PostgreSQL, through the same columns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import operator
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from stepstone.errors import (
    FencedError,
    InstanceExistsError,
    InstanceNotFoundError,
    StorageError,
)
from stepstone.models import (
    ROLLBACK_EVENT,
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
from stepstone.storage import sqlite_control as control
from stepstone.storage import versions_sql as versions
from stepstone.storage.base import ClaimResult, InstancePage
from stepstone.storage.bell import Bell, StreamWaiter
from stepstone.storage.blobs import BlobStore
from stepstone.storage.blobs_sqlite import SQLiteBlobStore
from stepstone.storage.blocking_renew import BlockingRenewer
from stepstone.storage.counts_sql import SQLITE_BY_STATUS, SQLITE_ONE_STATUS, ZERO_COUNTS
from stepstone.storage.sqlite_schema import (
    INSTANCE_COLUMNS,
    LINK_INSERT,
    LINK_QUERIES,
    STEP_COLUMNS,
    WORKFLOW_COLUMNS,
    event_from_row,
    instance_from_row,
    linked_from_row,
    migrate,
    step_from_row,
    step_to_row,
    workflow_from_row,
)
from stepstone.storage.sqlite_wal import preallocate_wal
from stepstone.storage.sqlite_writer import LoopWriter, Writer
from stepstone.storage.stream_sql import STREAM_EVENTS, first_row, history_events

T = TypeVar("T")
Conn = sqlite3.Connection
_BY_SEQ = operator.itemgetter(4)  # a STEP_COLUMNS row's seq
_STEP_INSERT = f"INSERT OR REPLACE INTO steps (instance_pk, {STEP_COLUMNS}) VALUES ({', '.join('?' * 16)})"
# The lease check and the write in one statement: nothing is written unless the token still matches.
_FENCED_STEP_INSERT = (
    f"INSERT OR REPLACE INTO steps (instance_pk, {STEP_COLUMNS}) SELECT {', '.join('?' * 16)} "
    "WHERE EXISTS (SELECT 1 FROM instances WHERE pk = ? AND lease_token = ?)"
)
_EVENT_INSERT = (
    "INSERT INTO instance_events (instance_pk, type, at, step_key, attempt, detail, since) VALUES (?, ?, ?, ?, ?, ?, ?)"
)


_INSERT_CHUNK = 100
"""Instances inserted per statement (13 parameters each, far below SQLite's limit)."""


@functools.lru_cache(maxsize=8)
def _insert_instances(n: int) -> str:
    """Insert ``n`` instances, runnable now; RETURNING the rows created (an id in use returns nothing)."""
    values = ", ".join(["(?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * n)
    return (
        "INSERT INTO instances (account, workflow, id, status, params, created_on, modified_on, runnable_at, "
        "trigger_source, version_id, schedule, success_retention_ms, error_retention_ms, traceparent) "
        f"VALUES {values} ON CONFLICT (account, workflow, id) DO NOTHING RETURNING {INSTANCE_COLUMNS}"
    )


def _insert_values(new: NewInstance) -> tuple[object, ...]:
    return (
        new.account,
        new.workflow,
        new.id,
        new.params,
        new.created_on,
        new.created_on,
        new.created_on,
        new.trigger_source,
        new.version_id,
        new.schedule,
        new.success_retention_ms,
        new.error_retention_ms,
        new.traceparent,
    )


class SQLiteStorage:
    """Storage on a SQLite file.

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
        """While anyone reads a stream, look every ``signal_poll_s`` whether any process added events."""
        last = None
        while self._open and self._bell.waiting:
            try:
                seq = await self._read(_last_event_id)
            except StorageError:
                seq = None
            if last is not None and seq != last:
                self._bell.ring(None)
            last = seq
            await asyncio.sleep(self.signal_poll_s)

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

    # -- workflows ------------------------------------------------------------------------------------
    async def put_workflow(self, record: WorkflowRecord, *, graph: str | None = None) -> WorkflowRecord:
        """Create or update a workflow of ``record.account`` (and the row of its version)."""

        def op(conn: Conn) -> WorkflowRecord:
            row = conn.execute(
                f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE account = ? AND name = ?",
                (record.account, record.name),
            ).fetchone()
            if row is None:
                conn.execute(
                    f"INSERT INTO workflows ({WORKFLOW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.name,
                        record.class_name,
                        record.script_name,
                        record.version_id,
                        record.created_on,
                        record.modified_on,
                        record.triggered_on,
                        record.config,
                        record.account,
                    ),
                )
                versions.put_version(conn, record, graph, None)
                return record
            old = workflow_from_row(row)
            if (old.class_name, old.script_name, old.config, old.version_id) == (
                record.class_name,
                record.script_name,
                record.config,
                record.version_id,
            ):
                return old
            versions.put_version(conn, record, graph, old.version_id)
            updated = conn.execute(
                "UPDATE workflows SET class_name = ?, script_name = ?, version_id = ?, modified_on = ?, "
                f"config = ? WHERE account = ? AND name = ? RETURNING {WORKFLOW_COLUMNS}",
                (
                    record.class_name,
                    record.script_name,
                    record.version_id,
                    record.modified_on,
                    record.config,
                    record.account,
                    record.name,
                ),
            ).fetchone()
            return workflow_from_row(updated)

        return await self._write(op)

    async def get_workflow(self, account: str, name: str) -> WorkflowRecord | None:
        """One workflow of the account, or None."""
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE account = ? AND name = ?", (account, name)
            ).fetchone()
        )
        return workflow_from_row(row) if row else None

    async def list_workflows(self, account: str | None) -> list[WorkflowRecord]:
        """The account's workflows (every account's for None), oldest first."""
        where, params = ("WHERE account = ?", (account,)) if account is not None else ("", ())
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT {WORKFLOW_COLUMNS} FROM workflows {where} ORDER BY created_on, name, account", params
            ).fetchall()
        )
        return [workflow_from_row(r) for r in rows]

    async def delete_workflow(self, account: str, name: str) -> bool:
        """Delete a workflow of the account and its instances."""

        def op(conn: Conn) -> bool:
            pks = [
                r[0]
                for r in conn.execute("SELECT pk FROM instances WHERE account = ? AND workflow = ?", (account, name))
            ]
            control.delete_pks(conn, pks)
            conn.execute(ZERO_COUNTS, (account, name))
            conn.execute(versions.DELETE_OF_WORKFLOW, (account, name))
            return conn.execute("DELETE FROM workflows WHERE account = ? AND name = ?", (account, name)).rowcount > 0

        deleted = await self._write(op)
        await self.blobs.collect()
        return deleted

    async def list_versions(self, account: str, workflow: str) -> list[VersionRecord]:
        """The workflow's versions, the current one first."""
        rows = await self._read(lambda c: c.execute(versions.LIST, (account, workflow)).fetchall())
        return [versions.version_from_row(r) for r in rows]

    async def get_version(self, account: str, workflow: str, version_id: str) -> VersionRecord | None:
        """One version of the workflow, or None."""
        row = await self._read(lambda c: c.execute(versions.GET, (account, workflow, version_id)).fetchone())
        return versions.version_from_row(row) if row else None

    async def record_version_run(
        self, lease: Lease, version_id: str, *, now: float, divergence: str | None = None
    ) -> None:
        """Record that ``version_id`` ran the leased instance (and how its replay diverged); fenced."""

        def op(conn: Conn) -> None:
            params = versions.ran_params(lease.pk, lease.token, version_id, now, divergence)
            if conn.execute(versions.RAN, params).rowcount == 0:
                raise FencedError(f"lease on instance {lease.pk} is no longer held")

        await self._write(op)

    async def instance_versions(self, pk: int) -> list[InstanceVersion]:
        """The versions recorded as having run the instance, in the order they first ran it."""
        rows = await self._read(lambda c: c.execute(versions.OF_INSTANCE, (pk,)).fetchall())
        return [versions.instance_version_from_row(r) for r in rows]

    async def count_by_status(self, account: str, workflow: str) -> dict[str, int]:
        """Instances of the account's workflow per status."""
        rows = await self._read(lambda c: c.execute(SQLITE_BY_STATUS, (account, workflow)).fetchall())
        return {status: count for status, count in rows}

    async def count_queued(self, account: str, workflow: str) -> int:
        """Queued instances of the account's workflow."""
        rows = await self._read(lambda c: c.execute(SQLITE_ONE_STATUS, (account, workflow, "queued")).fetchall())
        return int(rows[0][0]) if rows else 0

    # -- instances ------------------------------------------------------------------------------------
    async def create_instances(self, rows: Sequence[NewInstance], *, skip_existing: bool) -> list[InstanceRecord]:
        """Insert instances, runnable now."""

        def op(conn: Conn) -> list[InstanceRecord]:
            created: list[InstanceRecord] = []
            touched: set[tuple[str, str]] = set()
            # Ids whose previous instance is past its retention are free again: clear those first, in one query.
            by_workflow: dict[tuple[str, str], list[str]] = {}
            for new in rows:
                by_workflow.setdefault((new.account, new.workflow), []).append(new.id)
            for (account, workflow), ids in by_workflow.items():
                marks = ", ".join("?" * len(ids))
                expired = conn.execute(
                    f"SELECT pk FROM instances WHERE account = ? AND workflow = ? AND id IN ({marks}) "
                    "AND expires_at <= ?",
                    (account, workflow, *ids, rows[0].created_on),
                ).fetchall()
                control.delete_pks(conn, [r[0] for r in expired])
            inserted: dict[tuple[str, str, str], InstanceRecord] = {}
            for i in range(0, len(rows), _INSERT_CHUNK):  # one statement per chunk: ~4 x less per instance
                chunk = rows[i : i + _INSERT_CHUNK]
                params = [value for new in chunk for value in _insert_values(new)]
                for row in conn.execute(_insert_instances(len(chunk)), params).fetchall():
                    made = instance_from_row(row)
                    inserted[(made.account, made.workflow, made.id)] = made
            for new in rows:
                key = (new.account, new.workflow, new.id)
                record = inserted.pop(key) if key in inserted else None  # an id repeated in rows: its first
                if record is None:
                    if not skip_existing:
                        raise InstanceExistsError(
                            f"instance {new.id!r} already exists in workflow {new.workflow!r}; "
                            "use restart() to run it again"
                        )
                    continue
                created.append(record)
                self._touched.append(record.pk)
                if new.parent_pk is not None:
                    conn.execute(LINK_INSERT, (record.pk, new.parent_pk, int(new.terminate_with_parent)))
                touched.add((new.account, new.workflow))
            if created:
                self._signal(conn, 0, "new", rows[0].created_on)
            for account, name in touched:
                conn.execute(
                    "UPDATE workflows SET triggered_on = ? WHERE account = ? AND name = ?",
                    (rows[0].created_on, account, name),
                )
            return created

        return await self._write(op)

    async def instance_links(self, pk: int) -> InstanceLinks:
        """The instance's parent and children."""

        def read(c: Conn) -> InstanceLinks:
            parent = c.execute(LINK_QUERIES[0], (pk,)).fetchone()
            children = c.execute(LINK_QUERIES[1], (pk,)).fetchall()
            return InstanceLinks(linked_from_row(parent) if parent else None, [linked_from_row(r) for r in children])

        return await self._read(read)

    async def get_instance(self, account: str, workflow: str, instance_id: str) -> InstanceRecord | None:
        """One instance of the account's workflow, or None."""
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE account = ? AND workflow = ? AND id = ?",
                (account, workflow, instance_id),
            ).fetchone()
        )
        return instance_from_row(row) if row else None

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
        """A page of the account's workflow's instances by creation time."""
        query = functools.partial(
            control.list_instances,
            account=account,
            workflow=workflow,
            status=status,
            limit=limit,
            offset=offset,
            newest_first=newest_first,
            created_after=created_after,
            created_before=created_before,
        )
        return await self._read(query)

    async def load_history(self, pk: int) -> tuple[list[StepRecord], list[EventRecord]]:
        """Steps by first start and unconsumed events, in one read transaction."""

        def read(c: Conn) -> tuple[list[StepRecord], list[EventRecord]]:
            c.execute("BEGIN")
            try:
                # In key order, sorted by seq here: ORDER BY seq would sort the whole rows in a temp B-tree.
                steps = c.execute(f"SELECT {STEP_COLUMNS} FROM steps WHERE instance_pk = ?", (pk,)).fetchall()
                events = c.execute(
                    "SELECT pk, type, payload, received_at, consumed_by FROM events "
                    "WHERE instance_pk = ? AND consumed_by IS NULL ORDER BY pk",
                    (pk,),
                ).fetchall()
            finally:
                c.execute("COMMIT")
            steps.sort(key=_BY_SEQ)
            return [step_from_row(r) for r in steps], [event_from_row(r) for r in events]

        return await self._read(read)

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
        """Lease runnable instances of these workflows (in every account), earliest due first."""

        def op(conn: Conn) -> ClaimResult:
            result = control.claim(
                conn,
                owner=owner,
                now=now,
                lease_seconds=lease_seconds,
                limit=limit,
                workflows=workflows,
                account_concurrency=account_concurrency,
            )
            self._touched.extend(c.lease.pk for c in result.claims)  # each has a workflow_running event
            return result

        return await self._write(op)

    async def renew(self, *, leases: Sequence[Lease], until: float) -> dict[int, LeaseState]:
        """Extend leases and report on each."""

        def op(conn: Conn) -> dict[int, LeaseState]:
            out: dict[int, LeaseState] = {}
            for lease in leases:
                row = conn.execute(
                    "UPDATE instances SET lease_expires_at = max(COALESCE(lease_expires_at, 0), ?) "
                    "WHERE pk = ? AND lease_token = ? RETURNING status",
                    (until, lease.pk, lease.token),
                ).fetchone()
                if row is not None:
                    out[lease.pk] = LeaseState(True, row[0])
                else:
                    cur = conn.execute("SELECT status FROM instances WHERE pk = ?", (lease.pk,)).fetchone()
                    out[lease.pk] = LeaseState(False, cur[0] if cur else None)
            return out

        return await self._write(op)

    async def release(self, lease: Lease) -> bool:
        """Expire one lease now, if it is still this one."""

        def op(conn: Conn) -> bool:
            return bool(
                conn.execute(
                    "UPDATE instances SET lease_expires_at = 0 WHERE pk = ? AND lease_token = ?",
                    (lease.pk, lease.token),
                ).rowcount
            )

        return await self._write(op)

    def renew_blocking(self, leases: Sequence[Lease], *, until: float) -> set[int]:
        """Extend leases from another thread, on a connection of its own (see ``storage.blocking_renew``)."""
        return self._renewer.renew(leases, until)

    async def lease_owners(self) -> list[str]:
        """Owners of leases that have not expired."""
        rows = await self._read(
            lambda c: c.execute("SELECT DISTINCT lease_owner FROM instances WHERE lease_owner IS NOT NULL").fetchall()
        )
        return [r[0] for r in rows]

    async def release_owners(self, owners: Sequence[str]) -> int:
        """Expire the leases of dead workers."""

        def op(conn: Conn) -> int:
            total = 0
            for owner in owners:
                total += conn.execute(
                    "UPDATE instances SET lease_expires_at = 0 WHERE lease_owner = ?", (owner,)
                ).rowcount
            return total

        return await self._write(op)

    def put_step(
        self, lease: Lease, step: StepRecord, *, durable: bool, events: Sequence[NewEvent] = ()
    ) -> Awaitable[None]:
        """Insert or replace a step with the events it adds, fenced by the lease."""
        params = (*step_to_row(lease.pk, step), lease.pk, lease.token)
        pk = lease.pk
        rows = [(pk, *e) for e in events]

        def op(conn: Conn) -> None:
            if conn.execute(_FENCED_STEP_INSERT, params).rowcount != 1:
                raise FencedError(f"lease on instance {lease.pk} is no longer held")
            if rows:
                if len(rows) == 1:  # a step.do write: one packed row
                    conn.execute(_EVENT_INSERT, rows[0])
                else:
                    conn.executemany(_EVENT_INSERT, rows)
                self._touched.append(pk)

        fut = self._writer.submit(op, wait=durable, single=True)
        if fut is None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if isinstance(fut, asyncio.Future):
            return fut
        return asyncio.wrap_future(fut)

    async def consume_event(
        self, lease: Lease, step: StepRecord, event_pk: int, *, events: Sequence[NewEvent] = ()
    ) -> None:
        """Record the wait step and consume its event atomically."""
        params = step_to_row(lease.pk, step)
        rows = [(lease.pk, *e) for e in events]

        def op(conn: Conn) -> None:
            control.fence(conn, lease)
            taken = conn.execute(
                "UPDATE events SET consumed_by = ? WHERE pk = ? AND consumed_by IS NULL",
                (step.key, event_pk),
            ).rowcount
            if not taken:
                raise FencedError(f"event {event_pk} was already consumed")
            conn.execute(_STEP_INSERT, params)
            conn.executemany(_EVENT_INSERT, rows)
            self._touched.append(lease.pk)

        await self._write(op)

    async def suspend(
        self, lease: Lease, *, now: float, wake_at: float | None, waiting_for: str, wait_types: Sequence[str]
    ) -> str:
        """Hibernate the instance."""
        types = list(wait_types)

        def op(conn: Conn) -> str:
            status = control.fence(conn, lease)
            self._touched.append(lease.pk)
            if status == "waitingForPause":
                control.set_paused(conn, lease.pk, now)
                return "paused"
            runnable = wake_at
            if types:
                marks = ", ".join("?" * len(types))
                pending = conn.execute(
                    f"SELECT 1 FROM events WHERE instance_pk = ? AND consumed_by IS NULL AND type IN ({marks}) LIMIT 1",
                    (lease.pk, *types),
                ).fetchone()
                if pending:
                    runnable = now
            conn.execute(
                "UPDATE instances SET status = 'waiting', runnable_at = ?, waiting_for = ?, wait_types = ?, "
                "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, modified_on = ? "
                "WHERE pk = ?",
                (runnable, waiting_for, "," + ",".join(types) + "," if types else None, now, lease.pk),
            )
            return "waiting"

        return await self._write(op)

    async def pause_drained(self, lease: Lease, *, now: float) -> None:
        """The pausing instance has drained: paused."""

        def op(conn: Conn) -> None:
            control.fence(conn, lease)
            self._touched.append(lease.pk)
            control.set_paused(conn, lease.pk, now)

        await self._write(op)

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
        """End the instance."""

        def op(conn: Conn) -> None:
            control.fence(conn, lease)
            self._touched.append(lease.pk)
            conn.execute(
                "UPDATE instances SET status = ?, output = ?, error_name = ?, error_message = ?, error_traceback = ?, "
                "ended_on = ?, modified_on = ?, runnable_at = NULL, waiting_for = NULL, wait_types = NULL, "
                "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, expires_at = ? WHERE pk = ?",
                (
                    status,
                    output,
                    error_name,
                    error_message,
                    error_traceback,
                    now,
                    now,
                    now + retention_ms / 1000,
                    lease.pk,
                ),
            )
            if status == "terminated":  # the end of a terminate's rollback: its request is consumed
                conn.execute("UPDATE instances SET terminated_at = ? WHERE pk = ?", (now, lease.pk))
                conn.execute(
                    "UPDATE events SET consumed_by = 'terminate' WHERE instance_pk = ? AND type = ? "
                    "AND consumed_by IS NULL",
                    (lease.pk, ROLLBACK_EVENT),
                )

        await self._write(op)

    # -- lifecycle control ----------------------------------------------------------------------------
    async def pause(self, account: str, workflow: str, instance_id: str, *, now: float) -> InstanceRecord:
        """Request a pause."""
        return await self._write(lambda c: control.pause(c, self._signal, account, workflow, instance_id, now=now))

    async def resume(self, account: str, workflow: str, instance_id: str, *, now: float) -> InstanceRecord:
        """Resume a paused or pausing instance."""
        return await self._write(lambda c: control.resume(c, self._signal, account, workflow, instance_id, now=now))

    async def terminate(
        self, account: str, workflow: str, instance_id: str, *, now: float, retention_ms: float, rollback: bool = False
    ) -> InstanceRecord:
        """Terminate now, or (``rollback``) have a run roll the instance back first."""
        return await self._write(
            lambda c: control.terminate(
                c, self._signal, account, workflow, instance_id, now=now, retention_ms=retention_ms, rollback=rollback
            )
        )

    async def restart(
        self, account: str, workflow: str, instance_id: str, *, now: float, from_step: StepRef | None
    ) -> InstanceRecord:
        """Restart fully or from a step."""
        record = await self._write(
            lambda c: control.restart(c, self._signal, account, workflow, instance_id, now=now, from_step=from_step)
        )
        self.blobs.collect_soon()
        return record

    async def send_event(
        self, account: str, workflow: str, instance_id: str, *, event_type: str, payload: str, now: float
    ) -> EventRecord:
        """Buffer an event and wake a waiter."""
        return await self._write(
            lambda c: control.send_event(
                c, self._signal, account, workflow, instance_id, event_type=event_type, payload=payload, now=now
            )
        )

    async def delete_instances(self, account: str, workflow: str, ids: Sequence[str]) -> list[str]:
        """Delete instances and their state."""
        found = await self._write(lambda c: control.delete_instances(c, self._signal, account, workflow, ids))
        await self.blobs.collect()
        return found

    async def purge_expired(self, *, now: float) -> int:
        """Delete instances past their retention, and signals every watcher has read.

        One write takes at most :attr:`purge_budget_s` (in deletes of :attr:`purge_batch` instances), then
        the writer commits it with whatever else is queued before the next: a purge of a million instances
        never holds the writer (in ``loop`` mode, the event loop) for long.
        """
        total, more = 0, True
        while more:
            n, more = await self._write(
                lambda c: control.purge_expired(c, now=now, limit=self.purge_batch, budget_s=self.purge_budget_s)
            )
            total += n
        await self._write(lambda c: control.purge_signals(c, now=now))
        if total:
            await self.blobs.collect()
        return total

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(commits, writes) made by the writer so far: writes per commit shows group commit at work."""
        return self._writer.commits, self._writer.writes


def _last_event_id(conn: Conn) -> int | None:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'instance_events'").fetchone()
    return None if row is None else int(row[0])
