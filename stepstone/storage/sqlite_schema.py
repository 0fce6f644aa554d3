"""The SQLite schema, version by version, and the row mappers shared by the SQLite backend."""

from __future__ import annotations

import json
import re
import sqlite3
from typing import Any, Final, cast

from stepstone.errors import SchemaVersionError
from stepstone.models import (
    CHILD_EVENT,
    EventRecord,
    InstanceRecord,
    LinkedInstance,
    StepRecord,
    WorkflowRecord,
)
from stepstone.storage.counts_sql import SQLITE_MIGRATION as SQLITE_COUNTS


def status_event(column: str) -> str:
    """SQL naming the ``workflow_*`` event of the status in ``column`` (both backends)."""
    return (
        f"CASE {column} WHEN 'queued' THEN 'workflow_queued' WHEN 'running' THEN 'workflow_running' "
        "WHEN 'waiting' THEN 'workflow_waiting' WHEN 'waitingForPause' THEN 'workflow_waiting_for_pause' "
        "WHEN 'paused' THEN 'workflow_paused' WHEN 'complete' THEN 'workflow_completed' "
        "WHEN 'errored' THEN 'workflow_errored' ELSE 'workflow_terminated' END"
    )


TAKEOVER: Final = (
    "{new}.status = 'running' AND {old}.status = 'running' AND {new}.lease_token IS NOT NULL "
    "AND {old}.lease_token IS NOT {new}.lease_token"
)
"""SQL: this update is a claim taking a running instance over (its lease expired), so it runs again."""

EXISTING_EVENTS: Final = (
    # instances made before the stream existed: queued, then their status now (a finished one ends its stream)
    "INSERT INTO instance_events (instance_pk, type, at) SELECT pk, 'workflow_queued', created_on FROM instances",
    "INSERT INTO instance_events (instance_pk, type, at) SELECT pk, "
    + status_event("status")
    + ", modified_on FROM instances WHERE status != 'queued'",
)

FINISHED_SQL: Final = "('complete', 'errored', 'terminated')"

BLOB_RESULT_LIKE: Final = '{"$blob":%'
"""SQL ``LIKE`` pattern of a step result that names a blob (``codec.BlobRef.stored``), both backends."""


def child_wake(child: str, status: str, cond: str = "") -> str:
    """The trigger statements (SQLite) that tell the parent of instance ``child`` (``new`` or ``old``) its child
    reached ``status`` (SQL): buffer the event, make the parent runnable if it waits for it, signal the workers."""
    kind = f"'{CHILD_EVENT}' || {child}.pk"
    link = f"FROM instance_links WHERE child_pk = {child}.pk {cond}"
    return f"""
            INSERT INTO events (instance_pk, type, payload, received_at)
                SELECT l.parent_pk, {kind}, '{{"status":"' || {status} || '"}}', {child}.modified_on
                FROM instance_links l JOIN instances p ON p.pk = l.parent_pk WHERE l.child_pk = {child}.pk {cond};
            UPDATE instances SET runnable_at = {child}.modified_on
                WHERE pk IN (SELECT parent_pk {link}) AND status = 'waiting'
                AND instr(wait_types, ',' || {kind} || ',') > 0;
            INSERT INTO signals (instance_pk, kind, at) SELECT parent_pk, 'new', {child}.modified_on {link};"""


VERSION_TABLES: Final = (
    """CREATE TABLE workflow_versions (
        account TEXT NOT NULL,
        workflow TEXT NOT NULL,
        id TEXT NOT NULL,
        class_name TEXT NOT NULL,
        created_on DOUBLE PRECISION NOT NULL,
        modified_on DOUBLE PRECISION NOT NULL,
        config TEXT NOT NULL DEFAULT '{}',
        graph TEXT,
        PRIMARY KEY (account, workflow, id)
    )""",
    "INSERT INTO workflow_versions (account, workflow, id, class_name, created_on, modified_on, config) "
    "SELECT account, name, version_id, class_name, created_on, modified_on, config FROM workflows",
    """CREATE TABLE instance_versions (
        instance_pk BIGINT NOT NULL,
        version_id TEXT NOT NULL,
        first_ran_on DOUBLE PRECISION NOT NULL,
        last_ran_on DOUBLE PRECISION NOT NULL,
        divergence TEXT,
        PRIMARY KEY (instance_pk, version_id)
    )""",
)
"""The version tables (both backends: the same statements)."""

VERSION_COLUMNS: Final = "account, workflow, id, class_name, created_on, modified_on, config, graph"
INSTANCE_VERSION_COLUMNS: Final = "version_id, first_ran_on, last_ran_on, divergence"


_EVENTS_CREATED: Final = """CREATE TRIGGER instance_events_created AFTER INSERT ON instances BEGIN
            INSERT INTO instance_events (instance_pk, type, at) VALUES (new.pk, 'workflow_queued', new.created_on);
        END"""
_EVENTS_CHANGED: Final = f"""CREATE TRIGGER instance_events_changed
        AFTER UPDATE OF status, generation, started_on, lease_token ON instances
        WHEN old.status IS NOT new.status OR old.generation IS NOT new.generation
            OR (old.started_on IS NULL AND new.started_on IS NOT NULL) OR ({TAKEOVER.format(old="old", new="new")})
        BEGIN
            INSERT INTO instance_events (instance_pk, type, at) SELECT new.pk, 'workflow_started', new.modified_on
                WHERE old.started_on IS NULL AND new.started_on IS NOT NULL;
            INSERT INTO instance_events (instance_pk, type, at)
                SELECT new.pk, {status_event("new.status")}, new.modified_on
                WHERE old.status IS NOT new.status OR old.generation IS NOT new.generation
                    OR ({TAKEOVER.format(old="old", new="new")});
        END"""
_NEXT_EVENT_ID: Final = "(SELECT COALESCE(MAX(event_id), 0) + 1 FROM instance_events WHERE instance_pk = new.pk)"


def _per_instance_ids(trigger: str) -> str:
    """A lifecycle trigger of version 6, giving each row the instance's next event id (version 12 on)."""
    out = re.sub(
        r"INSERT INTO instance_events \(instance_pk, type, at\)(\s+)(VALUES \(new\.pk,|SELECT new\.pk,)",
        lambda m: f"INSERT INTO instance_events (instance_pk, event_id, type, at){m[1]}{m[2]} {_NEXT_EVENT_ID},",
        trigger,
    )
    assert "(instance_pk, type, at)" not in out, "a lifecycle insert left without an event id"
    return out


MIGRATIONS: Final[tuple[str | tuple[str, ...], ...]] = (
    # version 1
    """
    CREATE TABLE workflows (
        name TEXT PRIMARY KEY,
        class_name TEXT NOT NULL,
        script_name TEXT NOT NULL,
        version_id TEXT NOT NULL,
        created_on REAL NOT NULL,
        modified_on REAL NOT NULL,
        triggered_on REAL,
        config TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE instances (
        pk INTEGER PRIMARY KEY,
        workflow TEXT NOT NULL,
        id TEXT NOT NULL,
        status TEXT NOT NULL,
        params TEXT NOT NULL,
        created_on REAL NOT NULL,
        modified_on REAL NOT NULL,
        output TEXT,
        error_name TEXT,
        error_message TEXT,
        started_on REAL,
        ended_on REAL,
        runnable_at REAL,
        waiting_for TEXT,
        paused_at REAL,
        generation INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_token TEXT,
        lease_expires_at REAL,
        trigger_source TEXT NOT NULL DEFAULT 'api',
        version_id TEXT NOT NULL DEFAULT '',
        schedule TEXT,
        success_retention_ms REAL,
        error_retention_ms REAL,
        expires_at REAL,
        terminated_at REAL,
        wait_types TEXT,
        UNIQUE (workflow, id)
    );
    CREATE INDEX instances_runnable ON instances (runnable_at) WHERE runnable_at IS NOT NULL;
    CREATE INDEX instances_leased ON instances (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
    CREATE INDEX instances_by_created ON instances (workflow, created_on);
    CREATE INDEX instances_expiring ON instances (expires_at) WHERE expires_at IS NOT NULL;
    CREATE TABLE steps (
        instance_pk INTEGER NOT NULL,
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        count INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        status TEXT NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        wake_at REAL,
        result TEXT,
        error_name TEXT,
        error_message TEXT,
        config TEXT,
        attempts TEXT,
        event_type TEXT,
        PRIMARY KEY (instance_pk, key)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        pk INTEGER PRIMARY KEY,
        instance_pk INTEGER NOT NULL,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        received_at REAL NOT NULL,
        consumed_by TEXT
    );
    CREATE INDEX events_by_instance ON events (instance_pk, pk);
    """,
    # version 2: cross-process signals between processes sharing the file (SQLite has no LISTEN/NOTIFY)
    """
    CREATE TABLE signals (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_pk INTEGER NOT NULL,
        kind TEXT NOT NULL,
        at REAL NOT NULL
    );
    """,
    # version 3: the W3C traceparent of the caller that created the instance (its runs' spans continue that trace)
    """
    ALTER TABLE instances ADD COLUMN traceparent TEXT;
    """,
    # version 4: counts by status and status-filtered pages read an index, not every row of the workflow
    """
    CREATE INDEX instances_by_status ON instances (workflow, status, created_on);
    """,
    # version 5: accounts partition the data. The account is part of the key of workflows and instances (steps
    # and events belong to an instance by its pk); every existing row belongs to the default account, 'local'.
    # SQLite cannot change a key in place, so both tables are rebuilt, keeping every pk.
    """
    CREATE TABLE workflows_new (
        account TEXT NOT NULL,
        name TEXT NOT NULL,
        class_name TEXT NOT NULL,
        script_name TEXT NOT NULL,
        version_id TEXT NOT NULL,
        created_on REAL NOT NULL,
        modified_on REAL NOT NULL,
        triggered_on REAL,
        config TEXT NOT NULL DEFAULT '{}',
        PRIMARY KEY (account, name)
    );
    INSERT INTO workflows_new (account, name, class_name, script_name, version_id, created_on, modified_on,
        triggered_on, config)
    SELECT 'local', name, class_name, script_name, version_id, created_on, modified_on, triggered_on, config
    FROM workflows;
    DROP TABLE workflows;
    ALTER TABLE workflows_new RENAME TO workflows;
    CREATE TABLE instances_new (
        pk INTEGER PRIMARY KEY,
        account TEXT NOT NULL,
        workflow TEXT NOT NULL,
        id TEXT NOT NULL,
        status TEXT NOT NULL,
        params TEXT NOT NULL,
        created_on REAL NOT NULL,
        modified_on REAL NOT NULL,
        output TEXT,
        error_name TEXT,
        error_message TEXT,
        started_on REAL,
        ended_on REAL,
        runnable_at REAL,
        waiting_for TEXT,
        paused_at REAL,
        generation INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_token TEXT,
        lease_expires_at REAL,
        trigger_source TEXT NOT NULL DEFAULT 'api',
        version_id TEXT NOT NULL DEFAULT '',
        schedule TEXT,
        success_retention_ms REAL,
        error_retention_ms REAL,
        expires_at REAL,
        terminated_at REAL,
        wait_types TEXT,
        traceparent TEXT,
        UNIQUE (account, workflow, id)
    );
    INSERT INTO instances_new (pk, account, workflow, id, status, params, created_on, modified_on, output,
        error_name, error_message, started_on, ended_on, runnable_at, waiting_for, paused_at, generation,
        lease_owner, lease_token, lease_expires_at, trigger_source, version_id, schedule, success_retention_ms,
        error_retention_ms, expires_at, terminated_at, wait_types, traceparent)
    SELECT pk, 'local', workflow, id, status, params, created_on, modified_on, output, error_name,
        error_message, started_on, ended_on, runnable_at, waiting_for, paused_at, generation, lease_owner,
        lease_token, lease_expires_at, trigger_source, version_id, schedule, success_retention_ms,
        error_retention_ms, expires_at, terminated_at, wait_types, traceparent
    FROM instances;
    DROP TABLE instances;
    ALTER TABLE instances_new RENAME TO instances;
    CREATE INDEX instances_runnable ON instances (runnable_at) WHERE runnable_at IS NOT NULL;
    CREATE INDEX instances_leased ON instances (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
    CREATE INDEX instances_by_created ON instances (account, workflow, created_on);
    CREATE INDEX instances_expiring ON instances (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX instances_by_status ON instances (account, workflow, status, created_on);
    """,
    # version 6: the instance event stream (Cloudflare's subscribe), and the traceback of an errored instance.
    # Lifecycle events are written by triggers on the status change itself; step events by the step writes.
    # (A migration that rebuilds the instances table must create these triggers again.)
    # AUTOINCREMENT: an id is never handed out twice (a restart deletes events), so a cursor only moves on.
    (
        "ALTER TABLE instances ADD COLUMN error_traceback TEXT",
        """CREATE TABLE instance_events (
            event_id INTEGER PRIMARY KEY AUTOINCREMENT,
            instance_pk INTEGER NOT NULL,
            type TEXT NOT NULL,
            at REAL NOT NULL,
            step_key TEXT,
            attempt INTEGER,
            detail TEXT
        )""",
        "CREATE INDEX instance_events_by_instance ON instance_events (instance_pk, event_id)",
        _EVENTS_CREATED,
        # a claim that takes a running instance over from a dead worker (a new lease token) resumes it: running
        _EVENTS_CHANGED,
        *EXISTING_EVENTS,
    ),
    # version 7: a step.do write adds one packed event row (type 'step') for all the events it tells of, from
    # mark ``since`` to mark ``attempt`` (stepstone.history); the events are read back from the step row. Existing
    # rows keep one event each. Event ids become ``event_id * 16 + j`` (a cursor from before is re-read from
    # its row: nothing is lost, a few events may come twice).
    "ALTER TABLE instance_events ADD COLUMN since INTEGER",
    # version 8: child workflows (``step.run_workflow``). A link row ties a child to the parent that started it;
    # the child finishing (any path: a run, a terminate) or being deleted buffers an event of the type
    # CHILD_EVENT || child pk for the parent, and wakes it if it waits for that type, in the same transaction.
    (
        """CREATE TABLE instance_links (
            child_pk INTEGER PRIMARY KEY,
            parent_pk INTEGER NOT NULL,
            terminate_with_parent INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX instance_links_by_parent ON instance_links (parent_pk)",
        f"""CREATE TRIGGER instance_links_child_finished AFTER UPDATE OF status ON instances
        WHEN new.status IN {FINISHED_SQL} AND old.status NOT IN {FINISHED_SQL}
        BEGIN{child_wake("new", "new.status")}
        END""",
        f"""CREATE TRIGGER instance_links_deleted AFTER DELETE ON instances
        BEGIN{child_wake("old", "'deleted'", f"AND old.status NOT IN {FINISHED_SQL}")}
            DELETE FROM instance_links WHERE child_pk = old.pk OR parent_pk = old.pk;
        END""",
    ),
    # version 9: the blob store (stepstone.storage.blobs_sqlite): one row per streamed step output, its bytes in
    # a file beside the database. Deleting a step that names a blob (delete, purge, restart) marks the blob's
    # row deleted in the same transaction; the store unlinks the file, then drops the row. (REPLACE of a step
    # row fires no delete trigger: recursive_triggers is off.)
    (
        """CREATE TABLE blobs (
            blob_id TEXT PRIMARY KEY,
            instance_pk INTEGER NOT NULL,
            step_key TEXT NOT NULL,
            state TEXT NOT NULL,
            size INTEGER,
            created_at REAL NOT NULL
        )""",
        "CREATE INDEX blobs_by_step ON blobs (instance_pk, step_key)",
        "CREATE INDEX blobs_deleted ON blobs (state) WHERE state = 'deleted'",
        f"""CREATE TRIGGER blobs_step_deleted AFTER DELETE ON steps WHEN old.result LIKE '{BLOB_RESULT_LIKE}'
        BEGIN
            UPDATE blobs SET state = 'deleted' WHERE instance_pk = old.instance_pk AND step_key = old.key;
        END""",
    ),
    # version 10: workflow versions (one row per version id a workflow was registered under, with its diagram),
    # and the versions that ran an instance other than the one that created it, or whose replay diverged.
    VERSION_TABLES,
    # version 11: instance counts by (account, workflow, status), kept by triggers (stepstone.storage.counts_sql):
    # list totals and status counts read them instead of counting every index entry
    SQLITE_COUNTS,
    # version 12: the event rows clustered by instance (WITHOUT ROWID, key (instance_pk, event_id)) with ids per
    # instance (its highest + 1): a step's event row touches one page instead of three (a rowid table, its index,
    # and AUTOINCREMENT's sqlite_sequence row rewritten on every insert). A delete that removes an instance's
    # highest id leaves a 'gap' row with that id (stepstone.storage.sqlite_control), so no id is handed out twice
    # and a cursor only moves on. Existing ids are kept: they rise within each instance.
    (
        "DROP TRIGGER instance_events_created",
        "DROP TRIGGER instance_events_changed",
        """CREATE TABLE instance_events_by_pk (
            instance_pk INTEGER NOT NULL,
            event_id INTEGER NOT NULL,
            type TEXT NOT NULL,
            at REAL NOT NULL,
            step_key TEXT,
            attempt INTEGER,
            detail TEXT,
            since INTEGER,
            PRIMARY KEY (instance_pk, event_id)
        ) WITHOUT ROWID""",
        "INSERT INTO instance_events_by_pk (instance_pk, event_id, type, at, step_key, attempt, detail, since) "
        "SELECT instance_pk, event_id, type, at, step_key, attempt, detail, since FROM instance_events",
        "DROP TABLE instance_events",
        "ALTER TABLE instance_events_by_pk RENAME TO instance_events",
        _per_instance_ids(_EVENTS_CREATED),
        _per_instance_ids(_EVENTS_CHANGED),
    ),
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

INSTANCE_COLUMNS: Final = (
    "pk, workflow, id, status, params, created_on, modified_on, output, error_name, error_message, "
    "started_on, ended_on, runnable_at, waiting_for, paused_at, generation, lease_owner, lease_token, "
    "lease_expires_at, trigger_source, version_id, schedule, success_retention_ms, error_retention_ms, "
    "expires_at, terminated_at, traceparent, account, error_traceback"
)
STEP_COLUMNS: Final = (
    "key, kind, name, count, seq, status, started_at, ended_at, wake_at, result, error_name, "
    "error_message, config, attempts, event_type"
)
WORKFLOW_COLUMNS: Final = (
    "name, class_name, script_name, version_id, created_on, modified_on, triggered_on, config, account"
)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to :data:`SCHEMA_VERSION`, inside the caller's transaction."""
    conn.execute("CREATE TABLE IF NOT EXISTS stepstone_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    row = conn.execute("SELECT value FROM stepstone_meta WHERE key = 'schema_version'").fetchone()
    current = int(row[0]) if row else 0
    if current > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"database schema version {current} is newer than this stepstone supports ({SCHEMA_VERSION}); "
            "upgrade stepstone"
        )
    for version in range(current + 1, SCHEMA_VERSION + 1):
        for statement in migration_statements(MIGRATIONS[version - 1]):
            conn.execute(statement)
    conn.execute(
        "INSERT INTO stepstone_meta (key, value) VALUES ('schema_version', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(SCHEMA_VERSION),),
    )


def migration_statements(migration: str | tuple[str, ...]) -> list[str]:
    """A migration's statements: a tuple is its statements as they are (a trigger body holds ``;``), a string
    is split on ``;``."""
    parts = list(migration) if isinstance(migration, tuple) else migration.split(";")
    return [p for p in parts if p.strip()]


LINK_QUERIES: Final = (
    "SELECT p.pk, p.workflow, p.id, p.status, l.terminate_with_parent FROM instance_links l "
    "JOIN instances p ON p.pk = l.parent_pk WHERE l.child_pk = ?",
    "SELECT c.pk, c.workflow, c.id, c.status, l.terminate_with_parent FROM instance_links l "
    "JOIN instances c ON c.pk = l.child_pk WHERE l.parent_pk = ? ORDER BY c.created_on, c.pk",
)
"""An instance's parent, and its children (both backends; ``?`` becomes ``%s`` on PostgreSQL)."""
LINK_INSERT: Final = "INSERT INTO instance_links (child_pk, parent_pk, terminate_with_parent) VALUES (?, ?, ?)"


def linked_from_row(row: tuple[Any, ...]) -> LinkedInstance:
    """Map a row of :data:`LINK_QUERIES`."""
    return LinkedInstance(int(row[0]), row[1], row[2], row[3], bool(row[4]))


def instance_from_row(row: sqlite3.Row | tuple[Any, ...]) -> InstanceRecord:
    """Map a row selected with :data:`INSTANCE_COLUMNS`."""
    return InstanceRecord(*row)


def workflow_from_row(row: tuple[Any, ...]) -> WorkflowRecord:
    """Map a row selected with :data:`WORKFLOW_COLUMNS`."""
    return WorkflowRecord(*row)


def step_from_row(row: tuple[Any, ...]) -> StepRecord:
    """Map a row selected with :data:`STEP_COLUMNS` (its attempts are decoded when first read)."""
    key, kind, name, count, seq, status, started, ended, wake, result, error, message, config, attempts, event = row
    return StepRecord(
        key,
        kind,
        name,
        count,
        seq,
        status,
        started,
        ended,
        wake,
        result,
        error,
        message,
        config,
        None,
        event,
        attempts_json=attempts,
    )


_compact = json.JSONEncoder(separators=(",", ":")).encode


def step_to_row(pk: int, step: StepRecord) -> tuple[object, ...]:
    """The parameters to insert a step, instance key first."""
    attempts = (
        _compact(
            [
                [a.start, a.end, a.success, a.error_name, a.error_message]
                if a.traceback is None
                else [a.start, a.end, a.success, a.error_name, a.error_message, a.traceback]
                for a in step.attempts
            ]
        )
        if step.attempts
        else None
    )
    return (
        pk,
        step.key,
        step.kind,
        step.name,
        step.count,
        step.seq,
        step.status,
        step.started_at,
        step.ended_at,
        step.wake_at,
        step.result,
        step.error_name,
        step.error_message,
        step.config,
        attempts,
        step.event_type,
    )


def event_from_row(row: tuple[Any, ...]) -> EventRecord:
    """Map ``pk, type, payload, received_at, consumed_by``."""
    return EventRecord(*cast(tuple[int, str, str, float, str | None], row))
