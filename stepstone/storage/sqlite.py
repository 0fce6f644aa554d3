"""The SQLite backend: WAL, ``synchronous=FULL``, one group-committing writer, pooled readers.

Several processes on one host may share the file: writes take SQLite's write lock (``BEGIN IMMEDIATE``), and
claims, leases and fencing work exactly as on PostgreSQL, through the same columns.

:class:`SQLiteStorage` is built in three layers, a module each: :mod:`~stepstone.storage.sqlite_core` (the file,
connections, the writer, the event stream), :mod:`~stepstone.storage.sqlite_catalog` (workflows, instances and
their lifecycle: what the API does), and here the worker's side (claims, leases, step writes, suspend, finish).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

from stepstone.errors import (
    FencedError,
)
from stepstone.models import (
    ROLLBACK_EVENT,
    Lease,
    LeaseState,
    NewEvent,
    StepRecord,
)
from stepstone.storage import sqlite_control as control
from stepstone.storage.base import ClaimResult
from stepstone.storage.sqlite_catalog import SQLiteCatalog
from stepstone.storage.sqlite_core import Conn
from stepstone.storage.sqlite_schema import (
    STEP_COLUMNS,
    step_to_row,
)

_STEP_INSERT = f"INSERT OR REPLACE INTO steps (instance_pk, {STEP_COLUMNS}) VALUES ({', '.join('?' * 16)})"
# The lease check and the write in one statement: nothing is written unless the token still matches.
_FENCED_STEP_INSERT = (
    f"INSERT OR REPLACE INTO steps (instance_pk, {STEP_COLUMNS}) SELECT {', '.join('?' * 16)} "
    "WHERE EXISTS (SELECT 1 FROM instances WHERE pk = ? AND lease_token = ?)"
)
# An event row takes its instance's next id (the rows are clustered by instance: one page per write).
_EVENT_INSERT = (
    "INSERT INTO instance_events (instance_pk, event_id, type, at, step_key, attempt, detail, since) VALUES "
    "(?1, (SELECT COALESCE(MAX(event_id), 0) + 1 FROM instance_events WHERE instance_pk = ?1), ?2, ?3, ?4, ?5, ?6, ?7)"
)


class SQLiteStorage(SQLiteCatalog):
    """Storage on a SQLite file.

    Args:
        path: the database file; its directory is created if missing.
        synchronous: SQLite's ``synchronous`` pragma; ``FULL`` (the default) survives power loss.
        readers: how many reader threads (each with its own connection), in ``thread`` mode.
        mode: ``loop`` (the default) runs reads and group commits on the event loop's thread, with no
            thread hand-offs; ``thread`` gives writes a thread of their own and reads a thread pool.
    """

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
