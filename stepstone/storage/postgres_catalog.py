"""What the API does on PostgreSQL: workflows and their versions, instance counts, creating, listing and
reading instances, and the lifecycle control of pause, resume, terminate, restart, events, delete and the retention
purge (:class:`PostgresCatalog`, between :class:`~stepstone.storage.postgres_core.PostgresCore` and
:class:`~stepstone.storage.postgres.PostgresStorage`)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from stepstone.errors import (
    FencedError,
    InstanceExistsError,
)
from stepstone.models import (
    EventRecord,
    InstanceLinks,
    InstanceRecord,
    InstanceVersion,
    Lease,
    NewInstance,
    StepRecord,
    StepRef,
    VersionRecord,
    WorkflowRecord,
)
from stepstone.storage import postgres_control as control
from stepstone.storage import versions_sql as versions
from stepstone.storage.base import InstancePage, instance_filter, page_window
from stepstone.storage.counts_sql import FOLD_AT, ZERO_COUNTS, counted_total
from stepstone.storage.postgres_control import fetch_all, fetch_maybe, fetch_one
from stepstone.storage.postgres_core import PostgresCore
from stepstone.storage.postgres_writer import Conn
from stepstone.storage.sqlite_schema import (
    INSTANCE_COLUMNS,
    LINK_INSERT,
    LINK_QUERIES,
    STEP_COLUMNS,
    WORKFLOW_COLUMNS,
    instance_from_row,
    linked_from_row,
    step_from_row,
    workflow_from_row,
)

_STEP_FIELDS = STEP_COLUMNS.split(", ")
# A wait step and its event, fenced, in one statement: the event is marked only under a held lease, and the
# step is written only if the event was marked (or already marked by this very step).
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
_ACCOUNT_AT = INSTANCE_COLUMNS.split(", ").index("account")
# SET expressions see the row as it was: a requested pause (waitingForPause) wins over the wait.


class PostgresCatalog(PostgresCore):
    """Workflows, instances and their lifecycle on PostgreSQL (see :class:`PostgresCore`)."""

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
        counted = counted_total(status, created_after, created_before)
        cond, params, status = instance_filter(account, workflow, status, created_after, created_before)
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
