"""Transactions against PostgreSQL: retried across server restarts, and group-committed for a run's writes.

:class:`Transactor` runs a function of a connection in one transaction, on a pooled connection. A connection
that breaks (the server restarted, the network dropped) or a transaction PostgreSQL aborted (deadlock,
serialization failure) is retried with exponential backoff for up to ``retry_for`` seconds, so a restart of
the database is invisible to the engine as long as it comes back in time.

:class:`GroupWriter` is one task per storage, with a connection of its own, that owns the writes made on
behalf of runs (steps, suspends, finishes). It takes every pending write, sends them in one transaction and
one round trip, and resolves each caller's future once the commit returned: concurrent instances share
commits, the next batch accumulates while one commit is in flight, and a write nobody awaits
(``put_step(durable=False)``) stays ordered before every later write of the same instance.

Run writes are declarative (:class:`StepWrite`, :class:`Write`), not functions of a connection, so a batch
needs no client-side decision between its statements. Every one must be safe to run again after a failed or
unknown commit: they are upserts or fenced updates (a repeat after a commit we did not hear about is refused
by the fence).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from stepstone.errors import FencedError, StepstoneError, StorageError, StorageUnavailableError
from stepstone.storage.sqlite_schema import STEP_COLUMNS

T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Op = Callable[[Conn], Awaitable[Any]]

log = logging.getLogger("stepstone.storage.postgres")


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the connection broke, or PostgreSQL aborted the transaction."""
    return isinstance(exc, psycopg.OperationalError)


class AmbiguousCommit(StorageError):
    """The connection broke during COMMIT: the transaction may or may not have been applied."""


class Transactor:
    """Runs functions of a connection in transactions, retrying transient failures with backoff."""

    def __init__(self, pool: AsyncConnectionPool[Conn], *, retry_for: float) -> None:
        self.pool = pool
        self.retry_for = retry_for

    async def run(self, fn: Callable[[Conn], Awaitable[T]], *, idempotent: bool = True, single: bool = False) -> T:
        """Run ``fn`` in one transaction and commit; returns its result.

        Args:
            fn: the work; it may raise our errors (they roll back and pass through).
            idempotent: whether running ``fn`` again after a commit whose outcome is unknown is harmless.
                If not, such a failure raises :class:`AmbiguousCommit` instead of retrying.
            single: ``fn`` runs one statement, which is a transaction by itself: it runs in autocommit, in
                one round trip instead of three (``BEGIN``, the statement, ``COMMIT``).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        delay = 0.02
        while True:
            committing = False
            try:
                async with self.pool.connection() as conn:
                    if single:
                        await conn.set_autocommit(True)
                        try:
                            committing = True
                            return await fn(conn)
                        finally:
                            with contextlib.suppress(psycopg.Error):
                                await conn.set_autocommit(False)
                    result = await fn(conn)
                    committing = True
                    await conn.commit()
                    return result
            except StepstoneError:
                raise
            except psycopg.Error as exc:
                if not is_transient(exc):
                    raise StorageError(f"PostgreSQL error: {exc}") from exc
                if committing and not idempotent:
                    raise AmbiguousCommit(
                        f"the connection to PostgreSQL broke while committing; the write may or may not "
                        f"have been applied ({exc})"
                    ) from exc
                if loop.time() + delay > deadline:
                    raise StorageUnavailableError(
                        f"PostgreSQL unavailable for {self.retry_for:.0f}s, giving up: {exc}"
                    ) from exc
                log.warning("PostgreSQL transaction failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


class StepWrite:
    """A fenced step upsert: ``row`` is :func:`step_to_row` without the instance key. Batched with the other
    step writes of its batch into one ``INSERT ... SELECT`` (:data:`STEP_BATCH_UPSERT`); the instance events
    it adds (``(type, at, step_key, attempt, detail)``) go into one fenced insert before it (:data:`EVENTS_INSERT`)."""

    __slots__ = ("events", "key", "row", "token")

    def __init__(self, key: int, token: str, row: tuple[Any, ...], events: Sequence[Any] = ()) -> None:
        self.key = key
        self.token = token
        self.row = row
        self.events = events


class Write:
    """Any other run write: ``statements`` run in order inside the batch's transaction, and ``check`` turns the
    last one's rows into the caller's result (or raises, e.g. :class:`FencedError`).

    No decision is taken between the statements on the client, so a batch goes to the server in one round
    trip; a write that must be refused is refused by its own ``WHERE`` (a fenced write changes nothing).
    """

    __slots__ = ("check", "key", "statements")

    def __init__(
        self, key: int, statements: list[tuple[str, tuple[Any, ...]]], check: Callable[[list[tuple[Any, ...]]], Any]
    ) -> None:
        self.key = key
        self.statements = statements
        self.check = check


Item = tuple[int, "StepWrite | Write", "asyncio.Future[Any] | None"]
_BEGIN = ("BEGIN", ())
_COMMIT = ("COMMIT", ())


class _Unit:
    """Statements of one batch whose last one's rows resolve ``targets``."""

    __slots__ = ("resolve", "statements")

    def __init__(
        self, statements: list[tuple[str, tuple[Any, ...]]], resolve: Callable[[list[tuple[Any, ...]]], None]
    ) -> None:
        self.statements = statements
        self.resolve = resolve


class GroupWriter:
    """The task that group-commits a storage's run writes, on a connection of its own.

    A batch is every write queued since the previous batch was sent: while one commit is in flight, the next
    batch accumulates. The batch goes to the server in one round trip (psycopg pipeline mode: ``BEGIN``, the
    statements, ``COMMIT``); its step writes become one ``INSERT ... SELECT FROM unnest(...)`` that checks
    every lease while locking the instance rows in pk order, and reports which writes were fenced.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[Conn]],
        *,
        retry_for: float,
        max_batch: int = 2000,
        ride_along_s: float = 0.02,
    ) -> None:
        self._connect = connect
        self._retry_for = retry_for
        self._max_batch = max_batch
        self._ride_along_s = ride_along_s
        self._pending: list[Item] = []
        self._wake: asyncio.Future[None] | None = None
        self._stopping = False
        self._conn: Conn | None = None
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.writes = 0

    async def start(self) -> None:
        """Connect and start the writer task on the running loop."""
        self._conn = await self._connect()
        self._task = asyncio.create_task(self._run(), name="stepstone-pg-writer")

    def submit(self, op: StepWrite | Write, *, wait: bool = True) -> asyncio.Future[Any] | None:
        """Queue a write; with ``wait`` the returned future resolves after its commit."""
        fut: asyncio.Future[Any] | None = asyncio.get_running_loop().create_future() if wait else None
        self._pending.append((op.key, op, fut))
        wake = self._wake
        # An awaited write goes at once; the first write nobody awaits wakes the idle task too, which then lets
        # it ride along for at most ride_along_s (an attempt-start marker must not wait for the attempt's end).
        if (
            wake is not None
            and not wake.done()
            and (wait or len(self._pending) == 1 or len(self._pending) >= self._max_batch)
        ):
            wake.set_result(None)
        return fut

    async def run(self, op: StepWrite | Write) -> Any:
        """Queue a write and wait for its commit; returns its result."""
        fut = self.submit(op)
        assert fut is not None
        return await fut

    async def stop(self) -> None:
        """Commit what is queued, then stop and disconnect."""
        if self._task is not None:
            self._stopping = True
            if self._wake is not None and not self._wake.done():
                self._wake.set_result(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def _wait(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        self._wake = wake = loop.create_future()
        timer = loop.call_later(timeout, _settle, wake) if timeout is not None else None
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()

    async def _run(self) -> None:
        while True:
            if not self._pending:
                if self._stopping:
                    return
                await self._wait(None)
                continue
            if not self._stopping and all(fut is None for _, _, fut in self._pending):
                # Writes nobody waits for ride along with the next awaited one, at most ride_along_s.
                await self._wait(self._ride_along_s)
            batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
            # Instance rows are locked in pk order (as renewals lock them), so batches rarely deadlock
            # (a deadlock is retried); the sort is stable, so each instance's writes keep their order.
            batch.sort(key=_key)
            await self._commit(batch)

    async def _commit(self, batch: list[Item]) -> None:
        units = _plan(batch)
        try:
            results = await self._execute(units)
        except _NotTransient as failed:
            if len(batch) > 1:
                # One write hit a real error and aborted the transaction: commit each write on its own.
                for item in batch:
                    await self._commit([item])
                return
            fut = batch[0][2]
            error = StorageError(f"PostgreSQL error: {failed.cause}")
            if fut is not None and not fut.done():
                fut.set_exception(error)
            elif fut is None:
                log.error("a queued write failed: %s", error)
            return
        except StorageError as exc:
            for _, _, fut in batch:
                if fut is not None and not fut.done():
                    fut.set_exception(exc)
            return
        self.commits += 1
        self.writes += len(batch)
        for unit, rows in zip(units, results, strict=True):
            unit.resolve(rows)

    async def _execute(self, units: list[_Unit]) -> list[list[tuple[Any, ...]]]:
        """Run the units in one transaction, retrying transient failures on a fresh connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_for
        delay = 0.02
        statements = [s for unit in units for s in unit.statements]
        if len(statements) > 1:
            statements = [_BEGIN, *statements, _COMMIT]
        lasts = list(itertools.accumulate(len(unit.statements) for unit in units))
        offset = 1 if len(statements) > 1 else 0
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await self._connect()
                conn = self._conn
                cursors = []
                try:
                    if len(statements) == 1:
                        # One statement is its own transaction (autocommit), committed when it returns.
                        cursors.append(await conn.execute(*statements[0]))
                    else:
                        async with conn.pipeline():
                            for query, params in statements:
                                cursors.append(await conn.execute(query, params))
                except psycopg.Error as exc:
                    if is_transient(exc):
                        raise
                    if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                        await conn.execute("ROLLBACK")
                    raise _NotTransient(exc) from exc
                return [await cursors[offset + last - 1].fetchall() for last in lasts]
            except psycopg.OperationalError as exc:
                conn_, self._conn = self._conn, None
                if conn_ is not None:
                    with contextlib.suppress(Exception):
                        await conn_.close()
                if loop.time() + delay > deadline:
                    raise StorageUnavailableError(
                        f"PostgreSQL unavailable for {self._retry_for:.0f}s, giving up: {exc}"
                    ) from exc
                log.warning("PostgreSQL write batch failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


class _NotTransient(Exception):
    def __init__(self, cause: psycopg.Error) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _key(item: Item) -> int:
    return item[0]


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _plan(batch: list[Item]) -> list[_Unit]:
    """The batch's statements, in an order that keeps each instance's writes in submission order.

    Step writes go into rounds: an instance's step writes after its k-th other write (suspend, finish...) go
    into round k+1, so they run after it; round k's step writes run as one statement before round k's other
    writes. A step written twice in one round keeps its last version (each upsert replaces the whole row).
    """
    rounds: list[dict[tuple[int, str], list[Any]]] = []
    others: list[list[tuple[Write, asyncio.Future[Any] | None]]] = []
    rank: dict[int, int] = {}
    for key, op, fut in batch:
        r = rank.get(key, 0)
        if isinstance(op, StepWrite):
            while True:
                while len(rounds) <= r:
                    rounds.append({})
                    others.append([])
                slot = rounds[r].get((key, op.row[0]))
                if slot is None:
                    rounds[r][(key, op.row[0])] = [op.token, op.row, [fut], list(op.events)]
                    break
                if slot[0] == op.token:
                    slot[1] = op.row
                    slot[2].append(fut)
                    slot[3].extend(op.events)  # the row keeps its last version; every write's events stay
                    break
                r += 1
                rank[key] = r
        else:
            while len(rounds) <= r:
                rounds.append({})
                others.append([])
            others[r].append((op, fut))
            rank[key] = r + 1
    units: list[_Unit] = []
    for steps, writes in zip(rounds, others, strict=True):
        if steps:
            units.append(_step_unit(steps))
        units.extend(_write_unit(op, fut) for op, fut in writes)
    return units


_STEP_FIELDS = STEP_COLUMNS.split(", ")
_STEP_TYPES = ("text", "text", "text", "int", "int", "text", "float8", "float8", "float8") + ("text",) * 6
# Every step write of a round in one statement. The rows travel as one JSON array (json.dumps is C; psycopg
# dumps Python lists into PostgreSQL arrays element by element in Python, which cost 2x more here). The fence
# CTE locks the instance rows whose lease token still matches, in pk order; rows of fenced writes are not
# inserted, and RETURNING tells which were written.
STEP_BATCH_UPSERT = (
    "WITH v AS MATERIALIZED (SELECT (r->>0)::bigint AS instance_pk, r->>1 AS token, "
    + ", ".join(f"(r->>{i + 2})::{t} AS {c}" for i, (c, t) in enumerate(zip(_STEP_FIELDS, _STEP_TYPES, strict=True)))
    + " FROM jsonb_array_elements(%s::jsonb) r), "
    "fence AS MATERIALIZED (SELECT i.pk, i.lease_token FROM instances i "
    "JOIN (SELECT DISTINCT instance_pk, token FROM v) t ON i.pk = t.instance_pk AND i.lease_token = t.token "
    "ORDER BY i.pk FOR UPDATE OF i) "
    f"INSERT INTO steps (instance_pk, {STEP_COLUMNS}) SELECT v.instance_pk, "
    + ", ".join(f"v.{c}" for c in _STEP_FIELDS)
    + " FROM v JOIN fence ON fence.pk = v.instance_pk AND fence.lease_token = v.token "
    "ON CONFLICT (instance_pk, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STEP_FIELDS if c != "key")
    + " RETURNING instance_pk, key"
)
# The instance events of a round's step writes, from a JSON array of [instance_pk, token, type, at, step_key,
# attempt, detail, since]: inserted only for instances whose lease still matches, locking their rows first (in pk order,
# as the step statement after it does), so an instance's event ids follow its commit order. A repeat after an
# unknown commit adds nothing (the unique index on step events).
EVENTS_INSERT = (
    "WITH v AS MATERIALIZED (SELECT (r->>0)::bigint AS instance_pk, r->>1 AS token, r->>2 AS type, "
    "(r->>3)::float8 AS at, r->>4 AS step_key, (r->>5)::int AS attempt, r->>6 AS detail, (r->>7)::int AS since, n "
    "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS a(r, n)), "
    "fence AS MATERIALIZED (SELECT i.pk, i.lease_token FROM instances i "
    "JOIN (SELECT DISTINCT instance_pk, token FROM v) t ON i.pk = t.instance_pk AND i.lease_token = t.token "
    "ORDER BY i.pk FOR UPDATE OF i) "
    "INSERT INTO instance_events (instance_pk, type, at, step_key, attempt, detail, since) "
    "SELECT v.instance_pk, v.type, v.at, v.step_key, v.attempt, v.detail, v.since "
    "FROM v JOIN fence ON fence.pk = v.instance_pk AND fence.lease_token = v.token ORDER BY v.n "
    "ON CONFLICT DO NOTHING"
)
# One step write: the fence and the write in one statement; the CTE locks the instance row only if the token
# still matches.
STEP_UPSERT = (
    "WITH fence AS (SELECT pk FROM instances WHERE pk = %s AND lease_token = %s FOR UPDATE) "
    f"INSERT INTO steps (instance_pk, {STEP_COLUMNS}) SELECT fence.pk, "
    + ", ".join(["%s"] * len(_STEP_FIELDS))
    + " FROM fence ON CONFLICT (instance_pk, key) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _STEP_FIELDS if c != "key")
    + " RETURNING instance_pk, key"
)

# One step write with the one event row it adds (a step.do's packed row), still one statement: the event is
# inserted only when the fence holds, after the fence locked the row (so the instance's event ids follow its
# commit order), and a repeat after an unknown commit adds nothing (the unique index on step events).
STEP_UPSERT_WITH_EVENT = STEP_UPSERT.replace(
    "FOR UPDATE) ",
    "FOR UPDATE), ev AS (INSERT INTO instance_events (instance_pk, type, at, step_key, attempt, detail, since) "
    "SELECT pk, %s::text, %s::float8, %s::text, %s::int, %s::text, %s::int FROM fence ON CONFLICT DO NOTHING) ",
    1,
)


def _step_unit(steps: dict[tuple[int, str], list[Any]]) -> _Unit:
    entries = list(steps.items())
    events = [(pk, token, *e) for (pk, _), (token, _, _, evs) in entries for e in evs]
    if len(entries) == 1 and len(events) <= 1:
        (pk, _), (token, row, _, evs) = entries[0]
        statement = (STEP_UPSERT_WITH_EVENT, (pk, token, *evs[0], *row)) if evs else (STEP_UPSERT, (pk, token, *row))
        statements = [statement]
    else:
        rows = json.dumps([(pk, token, *row) for (pk, _), (token, row, _, _) in entries])
        statement = (STEP_BATCH_UPSERT, (rows,))
        statements = [(EVENTS_INSERT, (json.dumps(events),)), statement] if events else [statement]

    def resolve(rows: list[tuple[Any, ...]]) -> None:
        written = set(rows)
        for (pk, key), (_, _, futs, _) in entries:
            if (pk, key) in written:
                for fut in futs:
                    if fut is not None and not fut.done():
                        fut.set_result(None)
            else:
                for fut in futs:
                    if fut is not None and not fut.done():
                        fut.set_exception(FencedError(f"lease on instance {pk} is no longer held"))

    return _Unit(statements, resolve)


def _write_unit(op: Write, fut: asyncio.Future[Any] | None) -> _Unit:
    def resolve(rows: list[tuple[Any, ...]]) -> None:
        try:
            value = op.check(rows)
        except StepstoneError as exc:
            if fut is not None and not fut.done():
                fut.set_exception(exc)
            return
        if fut is not None and not fut.done():
            fut.set_result(value)

    return _Unit(op.statements, resolve)
