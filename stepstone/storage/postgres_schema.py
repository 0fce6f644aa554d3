"""The PostgreSQL schema, version by version, and the migration that applies it.

Columns and row shapes match the SQLite backend one for one (times are epoch seconds in ``double precision``),
so both share the row mappers of :mod:`stepstone.storage.sqlite_schema`.
"""

from __future__ import annotations

from typing import Final

from psycopg import AsyncConnection, sql

from stepstone.errors import SchemaVersionError
from stepstone.models import CHILD_EVENT
from stepstone.storage.counts_sql import POSTGRES_MIGRATION as POSTGRES_COUNTS
from stepstone.storage.sqlite_schema import (
    BLOB_RESULT_LIKE,
    EXISTING_EVENTS,
    FINISHED_SQL,
    TAKEOVER,
    VERSION_TABLES,
    migration_statements,
    status_event,
)

MIGRATIONS: Final[tuple[str | tuple[str, ...], ...]] = (
    # version 1
    """
    CREATE TABLE workflows (
        name TEXT PRIMARY KEY,
        class_name TEXT NOT NULL,
        script_name TEXT NOT NULL,
        version_id TEXT NOT NULL,
        created_on DOUBLE PRECISION NOT NULL,
        modified_on DOUBLE PRECISION NOT NULL,
        triggered_on DOUBLE PRECISION,
        config TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE instances (
        pk BIGSERIAL PRIMARY KEY,
        workflow TEXT NOT NULL,
        id TEXT NOT NULL,
        status TEXT NOT NULL,
        params TEXT NOT NULL,
        created_on DOUBLE PRECISION NOT NULL,
        modified_on DOUBLE PRECISION NOT NULL,
        output TEXT,
        error_name TEXT,
        error_message TEXT,
        started_on DOUBLE PRECISION,
        ended_on DOUBLE PRECISION,
        runnable_at DOUBLE PRECISION,
        waiting_for TEXT,
        paused_at DOUBLE PRECISION,
        generation INTEGER NOT NULL DEFAULT 0,
        lease_owner TEXT,
        lease_token TEXT,
        lease_expires_at DOUBLE PRECISION,
        trigger_source TEXT NOT NULL DEFAULT 'api',
        version_id TEXT NOT NULL DEFAULT '',
        schedule TEXT,
        success_retention_ms DOUBLE PRECISION,
        error_retention_ms DOUBLE PRECISION,
        expires_at DOUBLE PRECISION,
        terminated_at DOUBLE PRECISION,
        wait_types TEXT,
        UNIQUE (workflow, id)
    );
    CREATE INDEX instances_runnable ON instances (runnable_at) WHERE runnable_at IS NOT NULL;
    CREATE INDEX instances_leased ON instances (lease_expires_at) WHERE lease_expires_at IS NOT NULL;
    CREATE INDEX instances_by_created ON instances (workflow, created_on);
    CREATE INDEX instances_expiring ON instances (expires_at) WHERE expires_at IS NOT NULL;
    CREATE INDEX instances_running ON instances (workflow) WHERE status IN ('running', 'waitingForPause');
    CREATE TABLE steps (
        instance_pk BIGINT NOT NULL,
        key TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        count INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        status TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION,
        wake_at DOUBLE PRECISION,
        result TEXT,
        error_name TEXT,
        error_message TEXT,
        config TEXT,
        attempts TEXT,
        event_type TEXT,
        PRIMARY KEY (instance_pk, key)
    );
    CREATE TABLE events (
        pk BIGSERIAL PRIMARY KEY,
        instance_pk BIGINT NOT NULL,
        type TEXT NOT NULL,
        payload TEXT NOT NULL,
        received_at DOUBLE PRECISION NOT NULL,
        consumed_by TEXT
    );
    CREATE INDEX events_by_instance ON events (instance_pk, pk);
    """,
    # version 2: the W3C traceparent of the caller that created the instance (its runs' spans continue that trace)
    """
    ALTER TABLE instances ADD COLUMN traceparent TEXT;
    """,
    # version 3: counts by status and status-filtered pages read an index, not every row of the workflow
    """
    CREATE INDEX instances_by_status ON instances (workflow, status, created_on);
    """,
    # version 4: accounts partition the data. The account is part of the key of workflows and instances (steps
    # and events belong to an instance by its pk); every existing row belongs to the default account, 'local'.
    """
    ALTER TABLE workflows ADD COLUMN account TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE workflows ALTER COLUMN account DROP DEFAULT;
    ALTER TABLE workflows DROP CONSTRAINT workflows_pkey;
    ALTER TABLE workflows ADD PRIMARY KEY (account, name);
    ALTER TABLE instances ADD COLUMN account TEXT NOT NULL DEFAULT 'local';
    ALTER TABLE instances ALTER COLUMN account DROP DEFAULT;
    ALTER TABLE instances DROP CONSTRAINT instances_workflow_id_key;
    ALTER TABLE instances ADD CONSTRAINT instances_account_workflow_id_key UNIQUE (account, workflow, id);
    DROP INDEX instances_by_created;
    CREATE INDEX instances_by_created ON instances (account, workflow, created_on);
    DROP INDEX instances_running;
    CREATE INDEX instances_running ON instances (account, workflow) WHERE status IN ('running', 'waitingForPause');
    DROP INDEX instances_by_status;
    CREATE INDEX instances_by_status ON instances (account, workflow, status, created_on);
    """,
    # version 5: the instance event stream (Cloudflare's subscribe), and the traceback of an errored instance.
    # Lifecycle events are written by a trigger on the status change itself (under the row lock the change
    # holds, so one instance's event ids follow its commit order); step events by the fenced step writes, which
    # lock the row too. Every insert notifies the stream's listeners when its transaction commits.
    (
        "ALTER TABLE instances ADD COLUMN error_traceback TEXT",
        """CREATE TABLE instance_events (
            event_id BIGSERIAL PRIMARY KEY,
            instance_pk BIGINT NOT NULL,
            type TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            step_key TEXT,
            attempt INTEGER,
            detail TEXT
        )""",
        "CREATE INDEX instance_events_by_instance ON instance_events (instance_pk, event_id)",
        # a step write repeated after a commit whose outcome was unknown adds no event twice (ON CONFLICT)
        "CREATE UNIQUE INDEX instance_events_step_once ON instance_events "
        "(instance_pk, step_key, type, COALESCE(attempt, 0)) WHERE step_key IS NOT NULL",
        f"""CREATE FUNCTION stepstone_instance_event() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO instance_events (instance_pk, type, at) VALUES (NEW.pk, 'workflow_queued', NEW.created_on);
                RETURN NULL;
            END IF;
            IF OLD.started_on IS NULL AND NEW.started_on IS NOT NULL THEN
                INSERT INTO instance_events (instance_pk, type, at)
                    VALUES (NEW.pk, 'workflow_started', NEW.modified_on);
            END IF;
            IF OLD.status IS DISTINCT FROM NEW.status OR OLD.generation IS DISTINCT FROM NEW.generation
                OR ({TAKEOVER.format(old="OLD", new="NEW").replace("IS NOT", "IS DISTINCT FROM")}) THEN
                INSERT INTO instance_events (instance_pk, type, at)
                    VALUES (NEW.pk, {status_event("NEW.status")}, NEW.modified_on);
            END IF;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER instance_events_created AFTER INSERT ON instances "
        "FOR EACH ROW EXECUTE FUNCTION stepstone_instance_event()",
        "CREATE TRIGGER instance_events_changed AFTER UPDATE OF status, generation, started_on, lease_token "
        "ON instances FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status "
        "OR OLD.generation IS DISTINCT FROM NEW.generation OR (OLD.started_on IS NULL AND NEW.started_on IS NOT NULL) "
        f"OR ({TAKEOVER.format(old='OLD', new='NEW').replace('IS NOT', 'IS DISTINCT FROM')})) "
        "EXECUTE FUNCTION stepstone_instance_event()",
        """CREATE FUNCTION stepstone_instance_event_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('stepstone_events:' || TG_TABLE_SCHEMA, NEW.instance_pk::text);
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER instance_events_notify AFTER INSERT ON instance_events "
        "FOR EACH ROW EXECUTE FUNCTION stepstone_instance_event_notify()",
        *EXISTING_EVENTS,
    ),
    # version 6: a step.do write adds one packed event row (type 'step') for all the events it tells of, from
    # mark ``since`` to mark ``attempt`` (stepstone.history); the events are read back from the step row. Existing
    # rows keep one event each. Event ids become ``event_id * 16 + j`` (a cursor from before is re-read from
    # its row: nothing is lost, a few events may come twice).
    "ALTER TABLE instance_events ADD COLUMN since INTEGER",
    # version 7: child workflows (``step.run_workflow``), as SQLite's version 8: the child finishing or being
    # deleted buffers the parent's event and wakes it in the same transaction (the storage notifies workers).
    (
        """CREATE TABLE instance_links (
            child_pk BIGINT PRIMARY KEY,
            parent_pk BIGINT NOT NULL,
            terminate_with_parent INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX instance_links_by_parent ON instance_links (parent_pk)",
        f"""CREATE FUNCTION stepstone_child_wake() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            v_child BIGINT;
            v_status TEXT;
            v_kind TEXT;
            v_at DOUBLE PRECISION;
        BEGIN
            IF TG_OP = 'DELETE' THEN
                v_child := OLD.pk;
                v_status := 'deleted';
                v_at := OLD.modified_on;
                DELETE FROM instance_links WHERE parent_pk = OLD.pk;
                IF OLD.status IN {FINISHED_SQL} THEN
                    DELETE FROM instance_links WHERE instance_links.child_pk = OLD.pk;
                    RETURN NULL;
                END IF;
            ELSE
                v_child := NEW.pk;
                v_status := NEW.status;
                v_at := NEW.modified_on;
            END IF;
            v_kind := '{CHILD_EVENT}' || v_child;
            -- the parent's suspend takes this lock too: one of the two sees the other's commit (no lost wake-up)
            PERFORM pg_advisory_xact_lock(-l.parent_pk) FROM instance_links l WHERE l.child_pk = v_child;
            INSERT INTO events (instance_pk, type, payload, received_at)
                SELECT l.parent_pk, v_kind, '{{"status":"' || v_status || '"}}', v_at
                FROM instance_links l JOIN instances p ON p.pk = l.parent_pk WHERE l.child_pk = v_child;
            UPDATE instances SET runnable_at = v_at
                WHERE pk IN (SELECT l.parent_pk FROM instance_links l WHERE l.child_pk = v_child)
                AND status = 'waiting' AND strpos(wait_types, ',' || v_kind || ',') > 0;
            IF TG_OP = 'DELETE' THEN
                DELETE FROM instance_links WHERE instance_links.child_pk = OLD.pk;
            END IF;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER instance_links_child_finished AFTER UPDATE OF status ON instances FOR EACH ROW "
        f"WHEN (NEW.status IN {FINISHED_SQL} AND OLD.status NOT IN {FINISHED_SQL}) "
        "EXECUTE FUNCTION stepstone_child_wake()",
        "CREATE TRIGGER instance_links_deleted AFTER DELETE ON instances FOR EACH ROW "
        "EXECUTE FUNCTION stepstone_child_wake()",
    ),
    # version 8: the blob store (stepstone.storage.blobs_postgres), as SQLite's version 9 but with the bytes in
    # chunk rows: deleting a step that names a blob deletes the blob and its chunks in the same transaction.
    (
        """CREATE TABLE blobs (
            blob_id TEXT PRIMARY KEY,
            instance_pk BIGINT NOT NULL,
            step_key TEXT NOT NULL,
            size BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "CREATE INDEX blobs_by_step ON blobs (instance_pk, step_key)",
        """CREATE TABLE blob_chunks (
            blob_id TEXT NOT NULL REFERENCES blobs (blob_id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            data BYTEA NOT NULL,
            PRIMARY KEY (blob_id, seq)
        )""",
        """CREATE FUNCTION stepstone_blobs_step_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            DELETE FROM blobs WHERE instance_pk = OLD.instance_pk AND step_key = OLD.key;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER blobs_step_deleted AFTER DELETE ON steps FOR EACH ROW "
        f"WHEN (OLD.result LIKE '{BLOB_RESULT_LIKE}') EXECUTE FUNCTION stepstone_blobs_step_deleted()",
    ),
    # version 9: workflow versions and the versions that ran an instance, as SQLite's version 10.
    VERSION_TABLES,
    # version 10: instance counts by (account, workflow, status), as SQLite's version 11 but kept as delta rows
    # the triggers append (no hot counter row) and a fold moves into the counts (stepstone.storage.counts_sql)
    POSTGRES_COUNTS,
)
SCHEMA_VERSION: Final = len(MIGRATIONS)

# Any constant shared by every stepstone process: migrations of one schema never run concurrently.
_MIGRATION_LOCK: Final = 0x5354_4550


async def migrate(conn: AsyncConnection[tuple[object, ...]], schema: str | None) -> int:
    """Bring the schema to :data:`SCHEMA_VERSION` in one transaction; returns the version found before.

    Raises:
        SchemaVersionError: the database was migrated by a newer stepstone.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        if schema is not None:
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute("CREATE TABLE IF NOT EXISTS stepstone_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        cur = await conn.execute("SELECT value FROM stepstone_meta WHERE key = 'schema_version'")
        row = await cur.fetchone()
        current = int(str(row[0])) if row else 0
        if current > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"database schema version {current} is newer than this stepstone supports "
                f"({SCHEMA_VERSION}); upgrade stepstone"
            )
        for version in range(current + 1, SCHEMA_VERSION + 1):
            for statement in migration_statements(MIGRATIONS[version - 1]):
                await conn.execute(statement)
        await conn.execute(
            "INSERT INTO stepstone_meta (key, value) VALUES ('schema_version', %s) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(SCHEMA_VERSION),),
        )
    return current
