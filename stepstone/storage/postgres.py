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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from stepstone.errors import (
    FencedError,
    InstanceExistsError,
    InstanceNotFoundError,
    StorageError,
)
from stepstone.models import (
    CHILD_EVENT,
    ROLLBACK_EVENT,
    Claim,
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
from stepstone.storage import postgres_control as control
from stepstone.storage import versions_sql as versions
from stepstone.storage.base import ROLLING_BACK, ClaimResult, InstancePage, page_window, redact_url
from stepstone.storage.bell import Bell, StreamWaiter
from stepstone.storage.blobs import BlobStore
from stepstone.storage.blobs_postgres import PostgresBlobStore
from stepstone.storage.blocking_renew import BlockingRenewer
from stepstone.storage.counts_sql import FOLD_AT, ZERO_COUNTS, counted_total
from stepstone.storage.postgres_control import RELEASE, fetch_all, fetch_maybe, fetch_one
from stepstone.storage.postgres_schema import migrate
from stepstone.storage.postgres_writer import EVENTS_INSERT, Conn, GroupWriter, StepWrite, Transactor, Write
from stepstone.storage.sqlite_schema import (
    INSTANCE_COLUMNS,
    LINK_INSERT,
    LINK_QUERIES,
    STEP_COLUMNS,
    WORKFLOW_COLUMNS,
    instance_from_row,
    linked_from_row,
    step_from_row,
    step_to_row,
    workflow_from_row,
)
from stepstone.storage.stream_sql import STREAM_EVENTS, first_row, history_events

T = TypeVar("T")
log = logging.getLogger("stepstone.storage.postgres")

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
_NEW_ROWS = (
    "SELECT r->>0 AS workflow, r->>1 AS id, r->>2 AS params, (r->>3)::float8 AS created_on, r->>4 AS trigger_source, "
    "r->>5 AS version_id, r->>6 AS schedule, (r->>7)::float8 AS success_retention_ms, "
    "(r->>8)::float8 AS error_retention_ms, r->>9 AS traceparent, r->>10 AS account, n "
    "FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS a(r, n)"
)
_EXPIRED_IDS = (
    f"SELECT i.pk FROM instances i JOIN ({_NEW_ROWS}) v "
    "ON i.account = v.account AND i.workflow = v.workflow AND i.id = v.id "
    "WHERE i.expires_at <= v.created_on ORDER BY i.pk FOR UPDATE OF i"
)
_INSERT_INSTANCES = (
    "INSERT INTO instances (account, workflow, id, status, params, created_on, modified_on, runnable_at, "
    "trigger_source, version_id, schedule, success_retention_ms, error_retention_ms, traceparent) "
    "SELECT account, workflow, id, 'queued', params, created_on, created_on, created_on, trigger_source, version_id, "
    f"schedule, success_retention_ms, error_retention_ms, traceparent FROM ({_NEW_ROWS}) v ORDER BY n "
    f"ON CONFLICT (account, workflow, id) DO NOTHING RETURNING {INSTANCE_COLUMNS}"
)
# Steps (by seq) then unconsumed events (by pk) in one statement; an event row is laid out as
# (false, type, payload, consumed_by, NULL, pk, NULL, received_at, NULL...).
_LOAD_HISTORY = (
    f"SELECT true, {STEP_COLUMNS.replace('seq', 'seq::bigint')} FROM steps WHERE instance_pk = %s "
    "UNION ALL SELECT false, type, payload, consumed_by, NULL, pk, NULL, received_at, "
    + ", ".join(["NULL"] * (len(_STEP_FIELDS) - 7))
    + " FROM events WHERE instance_pk = %s AND consumed_by IS NULL ORDER BY 1 DESC, 6"
)
# The instance and its events after a cursor in one statement (one snapshot): the instance's columns on every
# row, the event's after them (NULL when there is none).
_READ_STREAM = (
    "SELECT "
    + ", ".join(f"i.{c}" for c in INSTANCE_COLUMNS.split(", "))
    + ", x.* FROM instances i LEFT JOIN LATERAL ("
    + STREAM_EVENTS.replace("e.instance_pk = %s", "e.instance_pk = i.pk")
    + ") x ON true WHERE i.account = %s AND i.workflow = %s AND i.id = %s ORDER BY x.event_id"
)
_INSTANCE_WIDTH = len(INSTANCE_COLUMNS.split(", "))
_ACCOUNT_AT = INSTANCE_COLUMNS.split(", ").index("account")
# SET expressions see the row as it was: a requested pause (waitingForPause) wins over the wait.
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
"""Tell the workers that a child's parent may be runnable (its finish trigger woke it)."""
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


class PostgresStorage:
    """Storage on PostgreSQL.

    Args:
        url: ``postgresql://user:password@host:port/dbname``.
        schema: keep the tables in this schema (created if missing) instead of the connection's default;
            signals then use the channel ``stepstone:<schema>`` instead of ``stepstone``.
        min_size: connections the pool keeps open.
        max_size: connections the pool opens at most.
        retry_for: how long to keep retrying while the server is unreachable before raising StorageError.
    """

    purge_batch = 1000
    """Instances the retention purge deletes per transaction."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        retry_for: float = 60.0,
    ) -> None:
        self.url = url
        self.schema = schema
        self.channel = "stepstone" if schema is None else f"stepstone:{schema}"
        self._kwargs: dict[str, Any] = {"autocommit": False}
        if schema is not None:
            self._kwargs["options"] = f"-c search_path={schema}"
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url, min_size=min_size, max_size=max_size, kwargs=self._kwargs, open=False, timeout=5.0
        )
        self._tx = Transactor(self._pool, retry_for=retry_for)
        self._writer = GroupWriter(self._connect_writer, retry_for=retry_for)
        self._done: asyncio.Future[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._on_signal: Callable[[int, str], None] | None = None
        self._bell = Bell()
        self._bell.on_first_waiter = self._ensure_listener
        self.events_channel = "stepstone_events:public"
        """The channel the ``instance_events`` trigger notifies: ``stepstone_events:<schema of the tables>``."""
        # The watchdog's connection: never wait long, it must keep watching the loop.
        options = f"{self._kwargs.get('options', '')} -c statement_timeout=2000 -c lock_timeout=1000".strip()
        renew_kwargs = {**self._kwargs, "options": options}
        self._renewer = BlockingRenewer(
            "postgres", lambda: psycopg.connect(self.url, connect_timeout=2, **renew_kwargs)
        )
        self.blobs: BlobStore = PostgresBlobStore(self)
        """Streamed step outputs, in a chunk table (:mod:`stepstone.storage.blobs_postgres`)."""
        self._open = False

    # -- lifecycle ------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, create or migrate the schema (refusing a newer one), start the writer."""
        try:
            async with await psycopg.AsyncConnection.connect(self.url, **self._kwargs) as conn:
                await migrate(conn, self.schema)
                cur = await conn.execute("SELECT current_schema()")
                row = await cur.fetchone()
                self.events_channel = f"stepstone_events:{row[0] if row else 'public'}"
            await self._pool.open(wait=True, timeout=30.0)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open PostgreSQL database {redact_url(self.url)}: {exc}") from exc
        except Exception as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot open PostgreSQL database {redact_url(self.url)}: {exc}") from exc
        try:
            await self._writer.start()
        except psycopg.Error as exc:
            await self._pool.close()
            raise StorageError(f"cannot open PostgreSQL database {redact_url(self.url)}: {exc}") from exc
        self._open = True
        await self.blobs.sweep(now=time.time())

    async def _connect_writer(self) -> Conn:
        # Autocommit: the writer sends BEGIN/COMMIT itself, in the same pipeline as the batch's statements.
        kwargs = {**self._kwargs, "autocommit": True}
        conn: Conn = await psycopg.AsyncConnection.connect(self.url, **kwargs)
        return conn

    async def close(self) -> None:
        """Commit queued writes, stop listening, close the pool."""
        if not self._open:
            return
        await self.blobs.close()
        self._open = False
        await self._writer.stop()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await asyncio.to_thread(self._renewer.close)
        await self._pool.close()

    async def subscribe(self, on_signal: Callable[[int, str], None]) -> None:
        """``LISTEN`` for control operations of every process; reconnects with backoff."""
        self._on_signal = on_signal
        self._ensure_listener()

    def _ensure_listener(self) -> None:
        if self._listener is None and self._open:
            self._listener = asyncio.create_task(self._listen(), name="stepstone-pg-listen")

    async def _listen(self) -> None:
        """One connection ``LISTEN``s for control signals and for stream events (``events_channel``)."""
        delay = 0.05
        connected_once = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.events_channel)))
                    delay = 0.05
                    if connected_once:
                        # notifications sent while we were away are lost: look now
                        if self._on_signal is not None:
                            self._on_signal(0, "new")
                        self._bell.ring(None)
                    connected_once = True
                    async for note in conn.notifies():
                        if note.channel == self.events_channel:
                            if note.payload.isdigit():
                                self._bell.ring((int(note.payload),))
                            continue
                        pk_text, _, kind = note.payload.partition(":")
                        if pk_text.isdigit() and kind and self._on_signal is not None:
                            self._on_signal(int(pk_text), kind)
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (%s); reconnecting in %.2fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, idempotent: bool = True, single: bool = False) -> T:
        return await self._tx.run(fn, idempotent=idempotent, single=single)

    # -- workflows ------------------------------------------------------------------------------------
    async def put_workflow(self, record: WorkflowRecord, *, graph: str | None = None) -> WorkflowRecord:
        """Create or update a workflow (and the row of its version)."""

        async def op(conn: Conn) -> WorkflowRecord:
            cur = await conn.execute(
                f"INSERT INTO workflows ({WORKFLOW_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT (account, name) DO NOTHING",
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
            old = workflow_from_row(
                await fetch_one(
                    conn,
                    f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE account = %s AND name = %s FOR UPDATE",
                    record.account,
                    record.name,
                )
            )
            if cur.rowcount == 1:
                await versions.put_version_pg(conn, record, graph, None)
                return old
            if (old.class_name, old.script_name, old.config, old.version_id) == (
                record.class_name,
                record.script_name,
                record.config,
                record.version_id,
            ):
                return old
            await versions.put_version_pg(conn, record, graph, old.version_id)
            row = await fetch_one(
                conn,
                "UPDATE workflows SET class_name = %s, script_name = %s, version_id = %s, modified_on = %s, "
                f"config = %s WHERE account = %s AND name = %s RETURNING {WORKFLOW_COLUMNS}",
                record.class_name,
                record.script_name,
                record.version_id,
                record.modified_on,
                record.config,
                record.account,
                record.name,
            )
            return workflow_from_row(row)

        return await self._run(op)

    async def get_workflow(self, account: str, name: str) -> WorkflowRecord | None:
        """One workflow of the account, or None."""
        row = await self._run(
            lambda c: fetch_maybe(
                c, f"SELECT {WORKFLOW_COLUMNS} FROM workflows WHERE account = %s AND name = %s", account, name
            )
        )
        return workflow_from_row(row) if row else None

    async def list_workflows(self, account: str | None) -> list[WorkflowRecord]:
        """The account's workflows (every account's for None), oldest first."""
        where, params = ("WHERE account = %s", (account,)) if account is not None else ("", ())
        rows = await self._run(
            lambda c: fetch_all(
                c, f"SELECT {WORKFLOW_COLUMNS} FROM workflows {where} ORDER BY created_on, name, account", *params
            )
        )
        return [workflow_from_row(r) for r in rows]

    async def delete_workflow(self, account: str, name: str) -> bool:
        """Delete a workflow of the account and its instances."""

        async def op(conn: Conn) -> bool:
            rows = await fetch_all(
                conn,
                "SELECT pk FROM instances WHERE account = %s AND workflow = %s ORDER BY pk FOR UPDATE",
                account,
                name,
            )
            await control.delete_pks(conn, [r[0] for r in rows])
            await control.fold_counts(conn, account, name)
            await conn.execute(ZERO_COUNTS.replace("?", "%s"), (account, name))
            await conn.execute(versions.pg(versions.DELETE_OF_WORKFLOW), (account, name))
            cur = await conn.execute("DELETE FROM workflows WHERE account = %s AND name = %s", (account, name))
            return cur.rowcount > 0

        deleted = await self._run(op)
        self.blobs.collect_soon()
        return deleted

    async def list_versions(self, account: str, workflow: str) -> list[VersionRecord]:
        """The workflow's versions, the current one first."""
        rows = await self._run(lambda c: fetch_all(c, versions.pg(versions.LIST), account, workflow))
        return [versions.version_from_row(r) for r in rows]

    async def get_version(self, account: str, workflow: str, version_id: str) -> VersionRecord | None:
        """One version of the workflow, or None."""
        row = await self._run(lambda c: fetch_maybe(c, versions.pg(versions.GET), account, workflow, version_id))
        return versions.version_from_row(row) if row else None

    async def record_version_run(
        self, lease: Lease, version_id: str, *, now: float, divergence: str | None = None
    ) -> None:
        """Record that ``version_id`` ran the leased instance (and how its replay diverged); fenced."""

        async def op(conn: Conn) -> None:
            params = versions.ran_params(lease.pk, lease.token, version_id, now, divergence)
            cur = await conn.execute(versions.pg(versions.RAN), params)
            if cur.rowcount == 0:
                raise FencedError(f"lease on instance {lease.pk} is no longer held")

        await self._run(op)

    async def instance_versions(self, pk: int) -> list[InstanceVersion]:
        """The versions recorded as having run the instance, in the order they first ran it."""
        rows = await self._run(lambda c: fetch_all(c, versions.pg(versions.OF_INSTANCE), pk))
        return [versions.instance_version_from_row(r) for r in rows]

    async def count_by_status(self, account: str, workflow: str) -> dict[str, int]:
        """Instances of the account's workflow per status."""
        counts, deltas = await self._run(lambda c: control.status_counts(c, account, workflow))
        await self._fold_if(deltas, account, workflow)
        return counts

    async def _fold_if(self, deltas: int, account: str, workflow: str) -> None:
        """Fold the workflow's count deltas when a read summed many of them."""
        if deltas > FOLD_AT:
            await self._run(lambda c: control.fold_counts(c, account, workflow))

    async def count_queued(self, account: str, workflow: str) -> int:
        """Queued instances of the account's workflow."""
        return (await self.count_by_status(account, workflow)).get("queued", 0)

    # -- instances ------------------------------------------------------------------------------------
    async def create_instances(self, rows: Sequence[NewInstance], *, skip_existing: bool) -> list[InstanceRecord]:
        """Insert instances, runnable now."""

        if not rows:
            return []
        payload = json.dumps(
            [
                [
                    new.workflow,
                    new.id,
                    new.params,
                    new.created_on,
                    new.trigger_source,
                    new.version_id,
                    new.schedule,
                    new.success_retention_ms,
                    new.error_retention_ms,
                    new.traceparent,
                    new.account,
                ]
                for new in rows
            ]
        )

        async def op(conn: Conn) -> list[InstanceRecord]:
            # Instances past their retention give their ids back: delete them first, then insert every row
            # in one statement (a conflict, also with an earlier row of this batch, inserts nothing).
            expired = await fetch_all(conn, _EXPIRED_IDS, payload)
            if expired:
                await control.delete_pks(conn, [r[0] for r in expired])
            inserted = {(r[_ACCOUNT_AT], r[1], r[2]): r for r in await fetch_all(conn, _INSERT_INSTANCES, payload)}
            created: list[InstanceRecord] = []
            touched: set[tuple[str, str]] = set()
            for new in rows:
                row = inserted.pop((new.account, new.workflow, new.id), None)
                if row is None:
                    if not skip_existing:
                        raise InstanceExistsError(
                            f"instance {new.id!r} already exists in workflow {new.workflow!r}; "
                            "use restart() to run it again"
                        )
                    continue
                created.append(instance_from_row(row))
                touched.add((new.account, new.workflow))
                if new.parent_pk is not None:
                    await conn.execute(
                        LINK_INSERT.replace("?", "%s"),
                        (created[-1].pk, new.parent_pk, int(new.terminate_with_parent)),
                    )
            for account, name in sorted(touched):
                await conn.execute(
                    "UPDATE workflows SET triggered_on = %s WHERE account = %s AND name = %s",
                    (rows[0].created_on, account, name),
                )
            if created:
                await control.notify(conn, self.channel, 0, "new")
            return created

        # A repeat after an unknown commit would report our own instances as existing.
        return await self._run(op, idempotent=skip_existing)

    async def instance_links(self, pk: int) -> InstanceLinks:
        """The instance's parent and children."""

        async def read(c: Conn) -> InstanceLinks:
            parent = await fetch_maybe(c, LINK_QUERIES[0].replace("?", "%s"), pk)
            children = await fetch_all(c, LINK_QUERIES[1].replace("?", "%s"), pk)
            return InstanceLinks(linked_from_row(parent) if parent else None, [linked_from_row(r) for r in children])

        return await self._run(read)

    async def get_instance(self, account: str, workflow: str, instance_id: str) -> InstanceRecord | None:
        """One instance of the account's workflow, or None."""
        row = await self._run(
            lambda c: fetch_maybe(
                c,
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE account = %s AND workflow = %s AND id = %s",
                account,
                workflow,
                instance_id,
            )
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
        where = ["account = %s", "workflow = %s"]
        params: list[object] = [account, workflow]
        counted = counted_total(status, created_after, created_before)
        if status == "rollingBack":  # a status REST shows, not one stored: see ROLLING_BACK
            where.append(ROLLING_BACK)
            status = None
        for clause, value in (
            ("status = %s", status),
            ("created_on >= %s", created_after),
            ("created_on <= %s", created_before),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        cond = " AND ".join(where)
        deltas = 0

        async def read(c: Conn) -> InstancePage:
            nonlocal deltas
            if counted:
                counts, deltas = await control.status_counts(c, account, workflow)
                total = sum(counts.values()) if status is None else counts.get(status, 0)
            else:
                total = int((await fetch_one(c, f"SELECT COUNT(*) FROM instances WHERE {cond}", *params))[0])
            desc, n, skip, reverse = page_window(total, limit, offset, newest_first)
            order = "DESC" if desc else "ASC"
            rows = await fetch_all(
                c,
                f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE {cond} "
                f"ORDER BY created_on {order}, pk {order} LIMIT %s OFFSET %s",
                *params,
                n,
                skip,
            )
            if reverse:
                rows.reverse()
            return InstancePage([instance_from_row(r) for r in rows], total)

        page = await self._run(read)
        await self._fold_if(deltas, account, workflow)
        return page

    async def load_history(self, pk: int) -> tuple[list[StepRecord], list[EventRecord]]:
        """Steps by first start and unconsumed events: one statement, so one snapshot and one round trip."""
        rows = await self._run(lambda c: fetch_all(c, _LOAD_HISTORY, pk, pk), single=True)
        steps = [step_from_row(r[1:]) for r in rows if r[0]]
        events = [EventRecord(r[5], r[1], r[2], r[7], r[3]) for r in rows if not r[0]]
        return steps, events

    # -- the instance event stream --------------------------------------------------------------------
    async def read_stream(
        self, account: str, workflow: str, instance_id: str, *, after: int, limit: int
    ) -> tuple[InstanceRecord, list[HistoryEvent]]:
        """The instance and its events after ``after``, in one statement."""
        args = (first_row(after), limit, account, workflow, instance_id)
        rows = await self._run(lambda c: fetch_all(c, _READ_STREAM, *args), single=True)
        if not rows:
            raise InstanceNotFoundError(f"instance {instance_id!r} not found in workflow {workflow!r}")
        inst = instance_from_row(rows[0][:_INSTANCE_WIDTH])
        events = [history_events(r[_INSTANCE_WIDTH:], after) for r in rows if r[_INSTANCE_WIDTH] is not None]
        return inst, [event for row_events in events for event in row_events]

    def stream_waiter(self, pk: int) -> StreamWaiter:
        """Wake-ups when any process commits an event of ``pk`` (the ``instance_events`` trigger's NOTIFY)."""
        return self._bell.waiter(pk)

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

    # -- lifecycle control ----------------------------------------------------------------------------
    async def pause(self, account: str, workflow: str, instance_id: str, *, now: float) -> InstanceRecord:
        """Request a pause."""
        return await self._run(lambda c: control.pause(c, self.channel, account, workflow, instance_id, now=now))

    async def resume(self, account: str, workflow: str, instance_id: str, *, now: float) -> InstanceRecord:
        """Resume a paused or pausing instance."""
        return await self._run(lambda c: control.resume(c, self.channel, account, workflow, instance_id, now=now))

    async def terminate(
        self, account: str, workflow: str, instance_id: str, *, now: float, retention_ms: float, rollback: bool = False
    ) -> InstanceRecord:
        """Terminate now, or (``rollback``) have a run roll the instance back first."""
        return await self._run(
            lambda c: control.terminate(
                c, self.channel, account, workflow, instance_id, now=now, retention_ms=retention_ms, rollback=rollback
            )
        )

    async def restart(
        self, account: str, workflow: str, instance_id: str, *, now: float, from_step: StepRef | None
    ) -> InstanceRecord:
        """Restart fully or from a step."""
        record = await self._run(
            lambda c: control.restart(c, self.channel, account, workflow, instance_id, now=now, from_step=from_step)
        )
        self.blobs.collect_soon()
        return record

    async def send_event(
        self, account: str, workflow: str, instance_id: str, *, event_type: str, payload: str, now: float
    ) -> EventRecord:
        """Buffer an event and wake a waiter."""
        # A repeat after an unknown commit would deliver the event twice.
        return await self._run(
            lambda c: control.send_event(
                c, self.channel, account, workflow, instance_id, event_type=event_type, payload=payload, now=now
            ),
            idempotent=False,
        )

    async def delete_instances(self, account: str, workflow: str, ids: Sequence[str]) -> list[str]:
        """Delete instances and their state."""
        found = await self._run(lambda c: control.delete_instances(c, self.channel, account, workflow, ids))
        self.blobs.collect_soon()
        return found

    async def purge_expired(self, *, now: float) -> int:
        """Delete instances past their retention, in transactions of at most :attr:`purge_batch` instances."""
        total = 0
        while True:
            n = await self._run(lambda c: control.purge_expired(c, now=now, limit=self.purge_batch))
            total += n
            if n < self.purge_batch:
                if total:
                    self.blobs.collect_soon()
                # the worker purges every minute: fold the count deltas of every workflow (the batches' too)
                await self._run(control.fold_counts)
                return total

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(commits, writes) made by the group writer so far."""
        return self._writer.commits, self._writer.writes


def _fenced_value(lease: Lease) -> Callable[[list[tuple[Any, ...]]], Any]:
    """The check of a fenced ``UPDATE ... RETURNING x``: x, or FencedError when no row matched the lease."""

    def check(rows: list[tuple[Any, ...]]) -> Any:
        if not rows:
            raise FencedError(f"lease on instance {lease.pk} is no longer held")
        return rows[0][0]

    return check
