"""The PostgreSQL backend: many workers on many machines sharing one database.

Semantics are the SQLite backend's, statement for statement; what differs is how they are made safe under
concurrency:

- claims pick rows with ``FOR UPDATE SKIP LOCKED``, so racing workers never wait on or share an instance;
- every fenced write locks the instance row while it checks the lease token, and every control operation
  locks it first, so a write and a terminate/restart never interleave;
- a workflow with a concurrency limit serialises its claims on its ``workflows`` row before counting;
- control operations ``pg_notify`` the change in their transaction; :meth:`PostgresStorage.subscribe`
  ``LISTEN``\\s on a dedicated connection and reconnects with backoff;
- transient failures (server restart, dropped connection, deadlock) are retried for ``retry_for`` seconds.

:class:`PostgresStorage` is built in three layers, a module each: :mod:`~stepstone.storage.postgres_core` (the
pool, the writer, signals, the event stream), :mod:`~stepstone.storage.postgres_catalog` (workflows, instances and
their lifecycle: what the API does), and here the worker's side (claims, leases, step writes, suspend, finish).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from stepstone.errors import (
    FencedError,
)
from stepstone.models import (
    CHILD_EVENT,
    ROLLBACK_EVENT,
    Claim,
    Lease,
    LeaseState,
    NewEvent,
    StepRecord,
)
from stepstone.storage import postgres_control as control
from stepstone.storage.base import ClaimResult
from stepstone.storage.postgres_catalog import PostgresCatalog
from stepstone.storage.postgres_control import RELEASE, fetch_all, fetch_one
from stepstone.storage.postgres_writer import EVENTS_INSERT, Conn, StepWrite, Write
from stepstone.storage.sqlite_schema import (
    INSTANCE_COLUMNS,
    STEP_COLUMNS,
    instance_from_row,
    step_to_row,
)

_STEP_FIELDS = STEP_COLUMNS.split(", ")
# A wait step and its event, fenced, in one statement: the event is marked only under a held lease, and the
# step is written only if the event was marked (or already marked by this very step).
_CONSUME_EVENT = (
    "WITH f AS MATERIALIZED (SELECT pk FROM instances WHERE pk = %s AND lease_token = %s FOR UPDATE), "
    "e AS (UPDATE events SET consumed_by = %s WHERE pk = %s AND instance_pk = (SELECT pk FROM f) "
    "AND (consumed_by IS NULL OR consumed_by = %s) RETURNING 1) "
    f"INSERT INTO steps (instance_pk, {STEP_COLUMNS}) SELECT f.pk, "
    + ", ".join(["%s"] * len(_STEP_FIELDS))
    + " FROM f WHERE EXISTS (SELECT 1 FROM e) ON CONFLICT (instance_pk, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STEP_FIELDS if c != "key")
    + " RETURNING 1"
)
_CONSUME_EVENTS = EVENTS_INSERT.replace(
    "ORDER BY v.n",
    "WHERE EXISTS (SELECT 1 FROM events WHERE pk = %s AND instance_pk = %s AND (consumed_by IS NULL "
    "OR consumed_by = %s)) ORDER BY v.n",
)
# New instances from a JSON array of [workflow, id, params, created_on, trigger_source, version_id, schedule,
# success_retention_ms, error_retention_ms, traceparent, account] rows.
_SUSPEND = (
    "UPDATE instances SET "
    "status = CASE WHEN status = 'waitingForPause' THEN 'paused' ELSE 'waiting' END, "
    "paused_at = CASE WHEN status = 'waitingForPause' THEN %s ELSE paused_at END, "
    "runnable_at = CASE WHEN status = 'waitingForPause' THEN NULL "
    "WHEN EXISTS (SELECT 1 FROM events e WHERE e.instance_pk = instances.pk AND e.consumed_by IS NULL "
    "AND e.type = ANY(%s::text[])) THEN %s ELSE %s::float8 END, "
    "waiting_for = CASE WHEN status = 'waitingForPause' THEN waiting_for ELSE %s END, "
    "wait_types = CASE WHEN status = 'waitingForPause' THEN wait_types ELSE %s END, "
    f"{RELEASE}, modified_on = %s WHERE pk = %s AND lease_token = %s RETURNING status"
)
_WAKE_PARENT = "SELECT pg_notify(%s, parent_pk::text || ':new') FROM instance_links WHERE child_pk = %s"
_FINISH = (
    "UPDATE instances SET status = %s, output = %s, error_name = %s, error_message = %s, error_traceback = %s, "
    "ended_on = %s, modified_on = %s, runnable_at = NULL, waiting_for = NULL, wait_types = NULL, "
    f"{RELEASE}, expires_at = %s WHERE pk = %s AND lease_token = %s RETURNING 1"
)
_FINISH_TERMINATED = _FINISH.replace("ended_on = %s,", "ended_on = %s, terminated_at = %s,")
_CONSUME_ROLLBACK = (
    "UPDATE events SET consumed_by = 'terminate' WHERE instance_pk = %s AND type = %s AND consumed_by IS NULL "
    "AND EXISTS (SELECT 1 FROM instances WHERE pk = %s AND lease_token = %s)"
)


class PostgresStorage(PostgresCatalog):
    """Storage on PostgreSQL.

    Args:
        url: ``postgresql://user:password@host:port/dbname``.
        schema: keep the tables in this schema (created if missing) instead of the connection's default;
            signals then use the channel ``stepstone:<schema>`` instead of ``stepstone``.
        min_size: connections the pool keeps open.
        max_size: connections the pool opens at most.
        retry_for: how long to keep retrying while the server is unreachable before raising StorageError.
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
        """Lease runnable instances, earliest due first, skipping rows other claimers hold."""
        names = list(workflows)

        async def op(conn: Conn) -> ClaimResult:
            claims: list[Claim] = []
            takeovers = 0
            if limit > 0 and names:
                rows = await control.candidates(conn, now=now, limit=limit, names=names)
                if account_concurrency is not None and rows:
                    rows = await control.within_accounts(conn, rows, now=now, cap=account_concurrency, limit=limit)
                takeovers = sum(1 for _, status, _ in rows if status == "running")  # a lease that expired
                pausing = [pk for pk, status, _ in rows if status == "waitingForPause"]
                runnable = [pk for pk, status, _ in rows if status != "waitingForPause"]
                if pausing:
                    await conn.execute(
                        f"UPDATE instances SET status = 'paused', paused_at = %s, runnable_at = NULL, {RELEASE}, "
                        "modified_on = %s WHERE pk = ANY(%s)",
                        (now, now, pausing),
                    )
                if runnable:
                    claimed = await fetch_all(
                        conn,
                        "UPDATE instances SET status = 'running', lease_owner = %s, "
                        "lease_token = replace(gen_random_uuid()::text, '-', ''), lease_expires_at = %s, "
                        "started_on = COALESCE(started_on, %s), modified_on = %s, waiting_for = NULL, "
                        f"wait_types = NULL WHERE pk = ANY(%s) RETURNING {INSTANCE_COLUMNS}",
                        owner,
                        now + lease_seconds,
                        now,
                        now,
                        runnable,
                    )
                    for record in sorted(map(instance_from_row, claimed), key=lambda r: (r.runnable_at, r.pk)):
                        assert record.lease_token is not None
                        claims.append(Claim(record, Lease(record.pk, record.lease_token, record.generation)))
            next_due = None
            if names:
                due, expiring = await fetch_one(
                    conn,
                    "SELECT (SELECT MIN(runnable_at) FROM instances WHERE runnable_at > %s AND workflow = ANY(%s)), "
                    "(SELECT MIN(lease_expires_at) FROM instances WHERE lease_expires_at IS NOT NULL "
                    "AND lease_owner != %s AND workflow = ANY(%s))",
                    now,
                    names,
                    owner,
                    names,
                )
                candidates = [t for t in (due, expiring) if t is not None]
                next_due = min(candidates) if candidates else None
            return ClaimResult(claims, next_due, takeovers)

        return await self._run(op)

    async def renew(self, *, leases: Sequence[Lease], until: float) -> dict[int, LeaseState]:
        """Extend leases and report on each."""
        ordered = sorted(leases, key=lambda lease: lease.pk)

        async def op(conn: Conn) -> dict[int, LeaseState]:
            # Rows are locked in pk order, the order every multi-row writer uses, so renewals never deadlock.
            rows = await fetch_all(
                conn,
                "WITH l AS (SELECT pk, token FROM unnest(%s::bigint[], %s::text[]) AS l(pk, token)), "
                "locked AS (SELECT i.pk FROM instances i JOIN l ON i.pk = l.pk ORDER BY i.pk FOR UPDATE OF i), "
                "renewed AS (UPDATE instances i SET lease_expires_at = GREATEST(i.lease_expires_at, %s) FROM l "
                "WHERE i.pk = l.pk AND i.lease_token = l.token AND i.pk IN (SELECT pk FROM locked) "
                "RETURNING i.pk) "
                "SELECT i.pk, i.status, i.pk IN (SELECT pk FROM renewed) FROM instances i JOIN l ON i.pk = l.pk",
                [lease.pk for lease in ordered],
                [lease.token for lease in ordered],
                until,
            )
            found = {pk: (status, held) for pk, status, held in rows}
            return {
                lease.pk: LeaseState(bool(found[lease.pk][1]), found[lease.pk][0])
                if lease.pk in found
                else LeaseState(False, None)
                for lease in ordered
            }

        # One statement in autocommit: its row locks end with it on the server. In a transaction they would last
        # until the COMMIT the loop sends next, and a step that blocks the loop in between would keep them for the
        # whole block: the watchdog's renewal skips locked rows, so the lease would run out meanwhile.
        return await self._run(op, single=True)

    async def release(self, lease: Lease) -> bool:
        """Expire one lease now, if it is still this one."""

        async def op(conn: Conn) -> bool:
            cur = await conn.execute(
                "UPDATE instances SET lease_expires_at = 0 WHERE pk = %s AND lease_token = %s", (lease.pk, lease.token)
            )
            return bool(cur.rowcount)

        return await self._run(op, single=True)

    def renew_blocking(self, leases: Sequence[Lease], *, until: float) -> set[int]:
        """Extend leases from another thread, on a connection of its own (see ``storage.blocking_renew``)."""
        return self._renewer.renew(leases, until)

    async def lease_owners(self) -> list[str]:
        """Owners of leases that have not been released."""
        rows = await self._run(
            lambda c: fetch_all(c, "SELECT DISTINCT lease_owner FROM instances WHERE lease_owner IS NOT NULL")
        )
        return [r[0] for r in rows]

    async def release_owners(self, owners: Sequence[str]) -> int:
        """Expire the leases of dead workers."""

        async def op(conn: Conn) -> int:
            cur = await conn.execute(
                "UPDATE instances SET lease_expires_at = 0 WHERE lease_owner = ANY(%s)", (list(owners),)
            )
            return cur.rowcount

        return await self._run(op)

    def put_step(
        self, lease: Lease, step: StepRecord, *, durable: bool, events: Sequence[NewEvent] = ()
    ) -> Awaitable[None]:
        """Insert or replace a step with the events it adds, fenced by the lease; group-committed."""
        write = StepWrite(lease.pk, lease.token, step_to_row(lease.pk, step)[1:], events)
        fut = self._writer.submit(write, wait=durable)
        if fut is None:
            # Callers may drop a queued write's awaitable: a finished future, not a coroutine, so nothing warns.
            fut = self._done
            if fut is None or fut.get_loop() is not asyncio.get_running_loop():
                fut = self._done = asyncio.get_running_loop().create_future()
                fut.set_result(None)
        return fut

    async def consume_event(
        self, lease: Lease, step: StepRecord, event_pk: int, *, events: Sequence[NewEvent] = ()
    ) -> None:
        """Record the wait step and consume its event atomically (with the step's events, if it can)."""
        row = step_to_row(lease.pk, step)
        # Consumed by this very step already: a repeat after a commit we did not hear about.
        params = (lease.pk, lease.token, step.key, event_pk, step.key, *row[1:])

        def check(rows: list[tuple[Any, ...]]) -> None:
            if not rows:
                raise FencedError(f"lease on instance {lease.pk} is no longer held, or event {event_pk} was consumed")

        statements: list[tuple[str, tuple[Any, ...]]] = []
        if events:
            # Only when the event can still be consumed by this step: the same condition as the write after it.
            payload = json.dumps([(lease.pk, lease.token, *e) for e in events])
            statements.append((_CONSUME_EVENTS, (payload, event_pk, lease.pk, step.key)))
        statements.append((_CONSUME_EVENT, params))
        await self._writer.run(Write(lease.pk, statements, check))

    async def suspend(
        self, lease: Lease, *, now: float, wake_at: float | None, waiting_for: str, wait_types: Sequence[str]
    ) -> str:
        """Hibernate the instance (or pause it, if a pause was requested meanwhile)."""
        types = list(wait_types)
        joined = "," + ",".join(types) + "," if types else None
        # The row is locked by a statement of its own, so the next one's snapshot sees every event committed
        # before the lock was granted (send_event locks the row first too): no event falls in between.
        lock = ("SELECT 1 FROM instances WHERE pk = %s FOR UPDATE", (lease.pk,))
        params = (now, types, now, wake_at, waiting_for, joined, now, lease.pk, lease.token)
        statements = [lock, (_SUSPEND, params)]
        if any(t.startswith(CHILD_EVENT) for t in types):
            # A child's finish trigger buffers its event under this lock (after its own row's), so either it
            # sees this instance waiting or the next statement sees its event: a wake-up is never lost.
            statements.insert(1, ("SELECT pg_advisory_xact_lock(-%s::bigint)", (lease.pk,)))
        result: str = await self._writer.run(Write(lease.pk, statements, _fenced_value(lease)))
        return result

    async def pause_drained(self, lease: Lease, *, now: float) -> None:
        """The pausing instance has drained: paused."""
        update = (
            f"UPDATE instances SET status = 'paused', paused_at = %s, runnable_at = NULL, {RELEASE}, "
            "modified_on = %s WHERE pk = %s AND lease_token = %s RETURNING 1"
        )
        await self._writer.run(Write(lease.pk, [(update, (now, now, lease.pk, lease.token))], _fenced_value(lease)))

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
        expires = now + retention_ms / 1000
        params = (status, output, error_name, error_message, error_traceback, now, now, expires, lease.pk, lease.token)
        wake = (_WAKE_PARENT, (self.channel, lease.pk))  # a child's parent: its trigger made it runnable
        statements: list[tuple[str, tuple[Any, ...]]] = [wake]
        if status == "terminated":  # the end of a terminate's rollback: its request is consumed
            statements.append((_CONSUME_ROLLBACK, (lease.pk, ROLLBACK_EVENT, lease.pk, lease.token)))
            statements.append((_FINISH_TERMINATED, (*params[:6], now, *params[6:])))
        else:
            statements.append((_FINISH, params))
        await self._writer.run(Write(lease.pk, statements, _fenced_value(lease)))


def _fenced_value(lease: Lease) -> Callable[[list[tuple[Any, ...]]], Any]:
    """The check of a fenced ``UPDATE ... RETURNING x``: x, or FencedError when no row matched the lease."""

    def check(rows: list[tuple[Any, ...]]) -> Any:
        if not rows:
            raise FencedError(f"lease on instance {lease.pk} is no longer held")
        return rows[0][0]

    return check
