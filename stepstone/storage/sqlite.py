"""The SQLite backend: WAL, ``synchronous=FULL``, one group-committing writer, pooled readers.

Several processes on one host may share the file: writes take SQLite's write lock (``BEGIN IMMEDIATE``), and
claims, leases and fencing work exactly as on PostgreSQL, through the same columns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from stepstone.errors import (
    FencedError,
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidStateError,
    StorageError,
)
from stepstone.models import (
    FINISHED,
    Claim,
    EventRecord,
    InstanceRecord,
    Lease,
    LeaseState,
    NewInstance,
    StepRecord,
    StepRef,
    WorkflowRecord,
)
from stepstone.storage.base import ClaimResult, InstancePage, concurrency_limit
from stepstone.storage.sqlite_schema import (
    INSTANCE_COLUMNS,
    STEP_COLUMNS,
    WORKFLOW_COLUMNS,
    event_from_row,
    instance_from_row,
    migrate,
    step_from_row,
    step_to_row,
    workflow_from_row,
)
from stepstone.storage.sqlite_writer import LoopWriter, Writer

T = TypeVar("T")
Conn = sqlite3.Connection
_STEP_INSERT = f"INSERT OR REPLACE INTO steps (instance_pk, {STEP_COLUMNS}) VALUES ({', '.join('?' * 16)})"
# The lease check and the write in one statement: nothing is written unless the token still matches.
_FENCED_STEP_INSERT = (
    f"INSERT OR REPLACE INTO steps (instance_pk, {STEP_COLUMNS}) SELECT {', '.join('?' * 16)} "
    "WHERE EXISTS (SELECT 1 FROM instances WHERE pk = ? AND lease_token = ?)"
)


def _new_token() -> str:
    return uuid.uuid4().hex


class SQLiteStorage:
    """Storage on a SQLite file.

    Args:
        path: the database file; its directory is created if missing.
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` (the default) survives power loss.
        readers: how many reader threads (each with its own connection), in ``thread`` mode.
        mode: ``loop`` (the default) runs reads and group commits on the event loop's thread, with no
            thread hand-offs; ``thread`` gives writes a thread of their own and reads a thread pool.
    """

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
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="stepstone-sqlite-read")
        self._local = threading.local()
        self._reader_conns: list[Conn] = []
        self._lock = threading.Lock()
        self._open = False

    # -- connections ----------------------------------------------------------------------------------
    def _connect(self) -> Conn:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        conn.execute("PRAGMA busy_timeout = 30000")
        conn.execute(f"PRAGMA synchronous = {self._synchronous}")
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

    async def close(self) -> None:
        """Commit queued writes, stop the threads, close connections."""
        if not self._open:
            return
        self._open = False
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
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

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
                rows = await self._read(functools.partial(_signals_after, after=seen))
            except StorageError:
                continue
            for seq, pk, kind in rows:
                seen = seq
                if seq in self._own_signals:
                    self._own_signals.discard(seq)
                    continue
                on_signal(pk, kind)

    def _signal(self, conn: Conn, pk: int, kind: str, now: float) -> None:
        seq = conn.execute("INSERT INTO signals (instance_pk, kind, at) VALUES (?, ?, ?)", (pk, kind, now)).lastrowid
        if seq is not None and self._watcher is not None:
            self._own_signals.add(seq)

    # -- workflows ------------------------------------------------------------------------------------
    async def put_workflow(self, record: WorkflowRecord) -> WorkflowRecord:
        """Create or update a workflow."""

        def op(conn: Conn) -> WorkflowRecord:
            row = conn.execute(f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = ?", (record.name,)).fetchone()
            if row is None:
                conn.execute(
                    f"INSERT INTO workflows ({WORKFLOW_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        record.name,
                        record.class_name,
                        record.script_name,
                        record.version_id,
                        record.created_on,
                        record.modified_on,
                        record.triggered_on,
                        record.config,
                    ),
                )
                return record
            old = workflow_from_row(row)
            changed = (old.class_name, old.script_name, old.config) != (
                record.class_name,
                record.script_name,
                record.config,
            )
            if not changed:
                return old
            conn.execute(
                "UPDATE workflows SET class_name = ?, script_name = ?, version_id = ?, modified_on = ?, "
                "config = ? WHERE name = ?",
                (
                    record.class_name,
                    record.script_name,
                    record.version_id,
                    record.modified_on,
                    record.config,
                    record.name,
                ),
            )
            return WorkflowRecord(
                record.name,
                record.class_name,
                record.script_name,
                record.version_id,
                old.created_on,
                record.modified_on,
                old.triggered_on,
                record.config,
            )

        return await self._write(op)

    async def get_workflow(self, name: str) -> WorkflowRecord | None:
        """One workflow, or None."""
        row = await self._read(
            lambda c: c.execute(f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE name = ?", (name,)).fetchone()
        )
        return workflow_from_row(row) if row else None

    async def list_workflows(self) -> list[WorkflowRecord]:
        """All workflows, oldest first."""
        rows = await self._read(
            lambda c: c.execute(f"SELECT {WORKFLOW_COLUMNS} FROM workflows ORDER BY created_on, name").fetchall()
        )
        return [workflow_from_row(r) for r in rows]

    async def delete_workflow(self, name: str) -> bool:
        """Delete a workflow and its instances."""

        def op(conn: Conn) -> bool:
            pks = [r[0] for r in conn.execute("SELECT pk FROM instances WHERE workflow = ?", (name,))]
            _delete_pks(conn, pks)
            return conn.execute("DELETE FROM workflows WHERE name = ?", (name,)).rowcount > 0

        return await self._write(op)

    async def count_by_status(self, workflow: str) -> dict[str, int]:
        """Instances of the workflow per status."""
        rows = await self._read(
            lambda c: c.execute(
                "SELECT status, COUNT(*) FROM instances WHERE workflow = ? GROUP BY status", (workflow,)
            ).fetchall()
        )
        return {status: count for status, count in rows}

    # -- instances ------------------------------------------------------------------------------------
    async def create_instances(self, rows: Sequence[NewInstance], *, skip_existing: bool) -> list[InstanceRecord]:
        """Insert instances, runnable now."""

        def op(conn: Conn) -> list[InstanceRecord]:
            created: list[InstanceRecord] = []
            touched: set[str] = set()
            # Ids whose previous instance is past its retention are free again: clear those first, in one query.
            by_workflow: dict[str, list[str]] = {}
            for new in rows:
                by_workflow.setdefault(new.workflow, []).append(new.id)
            for workflow, ids in by_workflow.items():
                marks = ", ".join("?" * len(ids))
                expired = conn.execute(
                    f"SELECT pk FROM instances WHERE workflow = ? AND id IN ({marks}) AND expires_at <= ?",
                    (workflow, *ids, rows[0].created_on),
                ).fetchall()
                _delete_pks(conn, [r[0] for r in expired])
            for new in rows:
                row = conn.execute(
                    "INSERT INTO instances (workflow, id, status, params, created_on, modified_on, "
                    "runnable_at, trigger_source, version_id, schedule, success_retention_ms, "
                    "error_retention_ms, traceparent) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    f"ON CONFLICT (workflow, id) DO NOTHING RETURNING {INSTANCE_COLUMNS}",
                    (
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
                    ),
                ).fetchone()
                if row is None:
                    if not skip_existing:
                        raise InstanceExistsError(
                            f"instance {new.id!r} already exists in workflow {new.workflow!r}; "
                            "use restart() to run it again"
                        )
                    continue
                created.append(instance_from_row(row))
                touched.add(new.workflow)
            if created:
                self._signal(conn, 0, "new", rows[0].created_on)
            for name in touched:
                conn.execute("UPDATE workflows SET triggered_on = ? WHERE name = ?", (rows[0].created_on, name))
            return created

        return await self._write(op)

    async def get_instance(self, workflow: str, instance_id: str) -> InstanceRecord | None:
        """One instance, or None."""
        row = await self._read(
            lambda c: c.execute(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE workflow = ? AND id = ?",
                (workflow, instance_id),
            ).fetchone()
        )
        return instance_from_row(row) if row else None

    async def list_instances(
        self,
        workflow: str,
        *,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = True,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> InstancePage:
        """A page of instances by creation time."""
        where = ["workflow = ?"]
        params: list[object] = [workflow]
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if created_after is not None:
            where.append("created_on >= ?")
            params.append(created_after)
        if created_before is not None:
            where.append("created_on <= ?")
            params.append(created_before)
        clause = " AND ".join(where)
        order = "DESC" if newest_first else "ASC"

        def read(c: Conn) -> InstancePage:
            total = c.execute(f"SELECT COUNT(*) FROM instances WHERE {clause}", params).fetchone()[0]
            rows = c.execute(
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE {clause} "
                f"ORDER BY created_on {order}, pk {order} LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            return InstancePage([instance_from_row(r) for r in rows], total)

        return await self._read(read)

    async def load_history(self, pk: int) -> tuple[list[StepRecord], list[EventRecord]]:
        """Steps by first start and unconsumed events, in one read transaction."""

        def read(c: Conn) -> tuple[list[StepRecord], list[EventRecord]]:
            c.execute("BEGIN")
            try:
                steps = c.execute(
                    f"SELECT {STEP_COLUMNS} FROM steps WHERE instance_pk = ? ORDER BY seq", (pk,)
                ).fetchall()
                events = c.execute(
                    "SELECT pk, type, payload, received_at, consumed_by FROM events "
                    "WHERE instance_pk = ? AND consumed_by IS NULL ORDER BY pk",
                    (pk,),
                ).fetchall()
            finally:
                c.execute("COMMIT")
            return [step_from_row(r) for r in steps], [event_from_row(r) for r in events]

        return await self._read(read)

    # -- the worker's side ----------------------------------------------------------------------------
    async def claim(
        self, *, owner: str, now: float, lease_seconds: float, limit: int, workflows: Sequence[str]
    ) -> ClaimResult:
        """Lease runnable instances, earliest due first."""
        marks = ", ".join("?" * len(workflows))

        def op(conn: Conn) -> ClaimResult:
            claims: list[Claim] = []
            takeovers = 0
            if limit > 0 and workflows:
                rows = _candidates(conn, now, limit, workflows)
                takeovers = sum(1 for _, status in rows if status == "running")  # a lease that expired
                for pk, status in rows:
                    if status == "waitingForPause":
                        conn.execute(
                            "UPDATE instances SET status = 'paused', paused_at = ?, runnable_at = NULL, "
                            "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, "
                            "modified_on = ? WHERE pk = ?",
                            (now, now, pk),
                        )
                        continue
                    row = conn.execute(
                        "UPDATE instances SET status = 'running', lease_owner = ?, lease_token = ?, "
                        "lease_expires_at = ?, started_on = COALESCE(started_on, ?), modified_on = ?, "
                        f"waiting_for = NULL, wait_types = NULL WHERE pk = ? RETURNING {INSTANCE_COLUMNS}",
                        (owner, _new_token(), now + lease_seconds, now, now, pk),
                    ).fetchone()
                    record = instance_from_row(row)
                    assert record.lease_token is not None
                    claims.append(Claim(record, Lease(pk, record.lease_token, record.generation)))
            next_due = None
            if workflows:
                due = conn.execute(
                    f"SELECT MIN(runnable_at) FROM instances WHERE runnable_at > ? AND workflow IN ({marks})",
                    (now, *workflows),
                ).fetchone()[0]
                expiring = conn.execute(
                    "SELECT MIN(lease_expires_at) FROM instances WHERE lease_expires_at IS NOT NULL "
                    f"AND lease_owner != ? AND workflow IN ({marks})",
                    (owner, *workflows),
                ).fetchone()[0]
                candidates = [t for t in (due, expiring) if t is not None]
                next_due = min(candidates) if candidates else None
            return ClaimResult(claims, next_due, takeovers)

        return await self._write(op)

    async def renew(self, *, leases: Sequence[Lease], until: float) -> dict[int, LeaseState]:
        """Extend leases and report on each."""

        def op(conn: Conn) -> dict[int, LeaseState]:
            out: dict[int, LeaseState] = {}
            for lease in leases:
                row = conn.execute(
                    "UPDATE instances SET lease_expires_at = ? WHERE pk = ? AND lease_token = ? RETURNING status",
                    (until, lease.pk, lease.token),
                ).fetchone()
                if row is not None:
                    out[lease.pk] = LeaseState(True, row[0])
                else:
                    cur = conn.execute("SELECT status FROM instances WHERE pk = ?", (lease.pk,)).fetchone()
                    out[lease.pk] = LeaseState(False, cur[0] if cur else None)
            return out

        return await self._write(op)

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

    def put_step(self, lease: Lease, step: StepRecord, *, durable: bool) -> Awaitable[None]:
        """Insert or replace a step, fenced by the lease."""
        params = (*step_to_row(lease.pk, step), lease.pk, lease.token)

        def op(conn: Conn) -> None:
            if conn.execute(_FENCED_STEP_INSERT, params).rowcount != 1:
                raise FencedError(f"lease on instance {lease.pk} is no longer held")

        fut = self._writer.submit(op, wait=durable, single=True)
        if fut is None:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if isinstance(fut, asyncio.Future):
            return fut
        return asyncio.wrap_future(fut)

    async def consume_event(self, lease: Lease, step: StepRecord, event_pk: int) -> None:
        """Record the wait step and consume its event atomically."""
        params = step_to_row(lease.pk, step)

        def op(conn: Conn) -> None:
            _fence(conn, lease)
            taken = conn.execute(
                "UPDATE events SET consumed_by = ? WHERE pk = ? AND consumed_by IS NULL",
                (step.key, event_pk),
            ).rowcount
            if not taken:
                raise FencedError(f"event {event_pk} was already consumed")
            conn.execute(_STEP_INSERT, params)

        await self._write(op)

    async def suspend(
        self, lease: Lease, *, now: float, wake_at: float | None, waiting_for: str, wait_types: Sequence[str]
    ) -> str:
        """Hibernate the instance."""
        types = list(wait_types)

        def op(conn: Conn) -> str:
            status = _fence(conn, lease)
            if status == "waitingForPause":
                _set_paused(conn, lease.pk, now)
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
            _fence(conn, lease)
            _set_paused(conn, lease.pk, now)

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
    ) -> None:
        """End the instance."""

        def op(conn: Conn) -> None:
            _fence(conn, lease)
            conn.execute(
                "UPDATE instances SET status = ?, output = ?, error_name = ?, error_message = ?, "
                "ended_on = ?, modified_on = ?, runnable_at = NULL, waiting_for = NULL, wait_types = NULL, "
                "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, expires_at = ? WHERE pk = ?",
                (status, output, error_name, error_message, now, now, now + retention_ms / 1000, lease.pk),
            )

        await self._write(op)

    # -- lifecycle control ----------------------------------------------------------------------------
    async def pause(self, workflow: str, instance_id: str, *, now: float) -> InstanceRecord:
        """Request a pause."""

        def op(conn: Conn) -> InstanceRecord:
            pk, status = _find(conn, workflow, instance_id)
            if status == "running":
                conn.execute("UPDATE instances SET status = 'waitingForPause', modified_on = ? WHERE pk = ?", (now, pk))
            elif status in ("waiting", "queued"):
                _set_paused(conn, pk, now)
            self._signal(conn, pk, "pause", now)
            return _get(conn, pk)

        return await self._write(op)

    async def resume(self, workflow: str, instance_id: str, *, now: float) -> InstanceRecord:
        """Resume a paused or pausing instance."""

        def op(conn: Conn) -> InstanceRecord:
            pk, status = _find(conn, workflow, instance_id)
            if status == "waitingForPause":
                conn.execute("UPDATE instances SET status = 'running', modified_on = ? WHERE pk = ?", (now, pk))
            elif status == "paused":
                paused_at = conn.execute("SELECT paused_at FROM instances WHERE pk = ?", (pk,)).fetchone()[0]
                shift = max(0.0, now - (paused_at or now))
                conn.execute(
                    "UPDATE steps SET wake_at = wake_at + ? WHERE instance_pk = ? AND wake_at IS NOT NULL "
                    "AND status IN ('waiting', 'retrying')",
                    (shift, pk),
                )
                conn.execute(
                    "UPDATE instances SET status = 'queued', runnable_at = ?, paused_at = NULL, "
                    "modified_on = ? WHERE pk = ?",
                    (now, now, pk),
                )
            self._signal(conn, pk, "resume", now)
            return _get(conn, pk)

        return await self._write(op)

    async def terminate(self, workflow: str, instance_id: str, *, now: float, retention_ms: float) -> InstanceRecord:
        """Terminate now."""

        def op(conn: Conn) -> InstanceRecord:
            pk, status = _find(conn, workflow, instance_id)
            if status in FINISHED:
                raise InvalidStateError(
                    f"cannot terminate instance {instance_id!r}: it is already {status} (a finished state)"
                )
            conn.execute(
                "UPDATE instances SET status = 'terminated', generation = generation + 1, runnable_at = NULL, "
                "waiting_for = NULL, wait_types = NULL, lease_owner = NULL, lease_token = NULL, "
                "lease_expires_at = NULL, ended_on = ?, terminated_at = ?, modified_on = ?, expires_at = ? "
                "WHERE pk = ?",
                (now, now, now, now + retention_ms / 1000, pk),
            )
            self._signal(conn, pk, "abort", now)
            return _get(conn, pk)

        return await self._write(op)

    async def restart(
        self, workflow: str, instance_id: str, *, now: float, from_step: StepRef | None
    ) -> InstanceRecord:
        """Restart fully or from a step."""

        def op(conn: Conn) -> InstanceRecord:
            pk, _ = _find(conn, workflow, instance_id)
            if from_step is None:
                conn.execute("DELETE FROM steps WHERE instance_pk = ?", (pk,))
                conn.execute("DELETE FROM events WHERE instance_pk = ?", (pk,))
            else:
                kind = from_step.kind
                rows = conn.execute(
                    "SELECT seq FROM steps WHERE instance_pk = ? AND kind = ? AND name = ? ORDER BY seq",
                    (pk, kind, from_step.name),
                ).fetchall()
                if from_step.count < 1 or len(rows) < from_step.count:
                    raise InvalidStateError(
                        f'cannot restart instance {instance_id!r}: step "{from_step.name}" '
                        f"(type {from_step.type}, count {from_step.count}) not found in execution history"
                    )
                seq = rows[from_step.count - 1][0]
                conn.execute("DELETE FROM steps WHERE instance_pk = ? AND seq >= ?", (pk, seq))
            conn.execute(
                "UPDATE instances SET status = 'queued', generation = generation + 1, runnable_at = ?, "
                "output = NULL, error_name = NULL, error_message = NULL, started_on = NULL, ended_on = NULL, "
                "paused_at = NULL, waiting_for = NULL, wait_types = NULL, lease_owner = NULL, "
                "lease_token = NULL, lease_expires_at = NULL, expires_at = NULL, terminated_at = NULL, "
                "modified_on = ? WHERE pk = ?",
                (now, now, pk),
            )
            self._signal(conn, pk, "abort", now)
            self._signal(conn, 0, "new", now)
            return _get(conn, pk)

        return await self._write(op)

    async def send_event(
        self, workflow: str, instance_id: str, *, event_type: str, payload: str, now: float
    ) -> EventRecord:
        """Buffer an event and wake a waiter."""

        def op(conn: Conn) -> EventRecord:
            pk, status = _find(conn, workflow, instance_id)
            if status in FINISHED:
                raise InvalidStateError(f"cannot send event {event_type!r} to instance {instance_id!r}: it is {status}")
            event_pk = conn.execute(
                "INSERT INTO events (instance_pk, type, payload, received_at) VALUES (?, ?, ?, ?)",
                (pk, event_type, payload, now),
            ).lastrowid
            conn.execute(
                "UPDATE instances SET runnable_at = ? WHERE pk = ? AND status = 'waiting' AND instr(wait_types, ?) > 0",
                (now, pk, f",{event_type},"),
            )
            assert event_pk is not None
            self._signal(conn, pk, "new", now)
            return EventRecord(event_pk, event_type, payload, now)

        return await self._write(op)

    async def delete_instances(self, workflow: str, ids: Sequence[str]) -> list[str]:
        """Delete instances and their state."""

        def op(conn: Conn) -> list[str]:
            found: list[str] = []
            pks: list[int] = []
            for instance_id in dict.fromkeys(ids):
                row = conn.execute(
                    "SELECT pk FROM instances WHERE workflow = ? AND id = ?", (workflow, instance_id)
                ).fetchone()
                if row:
                    found.append(instance_id)
                    pks.append(row[0])
            _delete_pks(conn, pks)
            for pk in pks:
                self._signal(conn, pk, "abort", time.time())
            return found

        return await self._write(op)

    async def purge_expired(self, *, now: float) -> int:
        """Delete instances past their retention."""

        def op(conn: Conn) -> int:
            pks = [r[0] for r in conn.execute("SELECT pk FROM instances WHERE expires_at <= ?", (now,))]
            _delete_pks(conn, pks)
            # Signals are read within milliseconds by live watchers; keep a minute for slow ones.
            conn.execute("DELETE FROM signals WHERE seq < (SELECT COALESCE(MAX(seq), 0) FROM signals) - 10000")
            conn.execute("DELETE FROM signals WHERE at < ? AND seq < (SELECT MAX(seq) FROM signals)", (now - 60,))
            return len(pks)

        return await self._write(op)

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(commits, writes) made by the writer so far: writes per commit shows group commit at work."""
        return self._writer.commits, self._writer.writes


def _candidates(conn: Conn, now: float, limit: int, workflows: Sequence[str]) -> list[tuple[int, str]]:
    """Due, unleased instances; a workflow with a concurrency limit gets at most its free slots."""
    marks = ", ".join("?" * len(workflows))
    limits: dict[str, int] = {}
    for name, config in conn.execute(f"SELECT name, config FROM workflows WHERE name IN ({marks})", (*workflows,)):
        if (lim := concurrency_limit(config)) is not None:
            limits[name] = lim
    groups: list[tuple[Sequence[str], int]] = []
    free = [w for w in workflows if w not in limits]
    if free:
        groups.append((free, limit))
    for name, lim in sorted(limits.items()):
        (running,) = conn.execute(
            "SELECT COUNT(*) FROM instances WHERE workflow = ? AND status IN ('running', 'waitingForPause') "
            "AND lease_expires_at >= ?",
            (name, now),
        ).fetchone()
        if lim - running > 0:
            groups.append(([name], min(limit, lim - running)))
    rows: list[tuple[float, int, str]] = []
    for names, size in groups:
        rows += conn.execute(
            "SELECT runnable_at, pk, status FROM instances WHERE runnable_at <= ? "
            "AND (lease_expires_at IS NULL OR lease_expires_at < ?) "
            f"AND workflow IN ({', '.join('?' * len(names))}) ORDER BY runnable_at LIMIT ?",
            (now, now, *names, size),
        ).fetchall()
    return [(pk, status) for _, pk, status in sorted(rows)[:limit]]


def _signals_after(conn: Conn, *, after: int) -> list[tuple[int, int, str]]:
    rows: list[tuple[int, int, str]] = conn.execute(
        "SELECT seq, instance_pk, kind FROM signals WHERE seq > ? ORDER BY seq", (after,)
    ).fetchall()
    return rows


def _fence(conn: Conn, lease: Lease) -> str:
    row = conn.execute("SELECT lease_token, status FROM instances WHERE pk = ?", (lease.pk,)).fetchone()
    if row is None or row[0] != lease.token:
        raise FencedError(f"lease on instance {lease.pk} is no longer held")
    status: str = row[1]
    return status


def _find(conn: Conn, workflow: str, instance_id: str) -> tuple[int, str]:
    row = conn.execute(
        "SELECT pk, status FROM instances WHERE workflow = ? AND id = ?", (workflow, instance_id)
    ).fetchone()
    if row is None:
        raise InstanceNotFoundError(f"instance {instance_id!r} not found in workflow {workflow!r}")
    return row[0], row[1]


def _get(conn: Conn, pk: int) -> InstanceRecord:
    row: Any = conn.execute(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE pk = ?", (pk,)).fetchone()
    return instance_from_row(row)


def _set_paused(conn: Conn, pk: int, now: float) -> None:
    conn.execute(
        "UPDATE instances SET status = 'paused', paused_at = ?, runnable_at = NULL, lease_owner = NULL, "
        "lease_token = NULL, lease_expires_at = NULL, modified_on = ? WHERE pk = ?",
        (now, now, pk),
    )


def _delete_pks(conn: Conn, pks: Sequence[int]) -> None:
    for pk in pks:
        conn.execute("DELETE FROM steps WHERE instance_pk = ?", (pk,))
        conn.execute("DELETE FROM events WHERE instance_pk = ?", (pk,))
        conn.execute("DELETE FROM instances WHERE pk = ?", (pk,))
