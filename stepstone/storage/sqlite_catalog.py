"""What the API does on SQLite: workflows and their versions, instance counts, creating, listing and reading
instances, and the lifecycle control of pause, resume, terminate, restart, events, delete and the retention purge
(:class:`SQLiteCatalog`, between :class:`~stepstone.storage.sqlite_core.SQLiteCore` and
:class:`~stepstone.storage.sqlite.SQLiteStorage`)."""

from __future__ import annotations

import functools
import operator
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
from stepstone.storage import sqlite_control as control
from stepstone.storage import versions_sql as versions
from stepstone.storage.base import InstancePage
from stepstone.storage.counts_sql import SQLITE_BY_STATUS, SQLITE_ONE_STATUS, ZERO_COUNTS
from stepstone.storage.sqlite_core import Conn, SQLiteCore
from stepstone.storage.sqlite_schema import (
    INSTANCE_COLUMNS,
    LINK_INSERT,
    LINK_QUERIES,
    STEP_COLUMNS,
    WORKFLOW_COLUMNS,
    event_from_row,
    instance_from_row,
    linked_from_row,
    step_from_row,
    workflow_from_row,
)

_BY_SEQ = operator.itemgetter(4)  # a STEP_COLUMNS row's seq
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


class SQLiteCatalog(SQLiteCore):
    """Workflows, instances and their lifecycle on a SQLite file (see :class:`SQLiteCore`)."""

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
