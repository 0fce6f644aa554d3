"""Workflow versions and the versions that ran an instance: the SQL both backends share.

A workflow's current version is ``workflows.version_id``; ``workflow_versions`` keeps one row per version id the
workflow was ever registered under (with its settings and its diagram), and ``instance_versions`` one row per
version that ran an instance when it was not the version that created it, or when its replay diverged from the
recorded history. Statements are written with ``?``; :func:`pg` turns them into PostgreSQL's ``%s``.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any, Final

from stepstone.models import InstanceVersion, VersionRecord, WorkflowRecord
from stepstone.storage.sqlite_schema import INSTANCE_VERSION_COLUMNS, VERSION_COLUMNS

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    PgConn = AsyncConnection[tuple[Any, ...]]

GET: Final = f"SELECT {VERSION_COLUMNS} FROM workflow_versions WHERE account = ? AND workflow = ? AND id = ?"
LIST: Final = (
    f"SELECT {VERSION_COLUMNS} FROM workflow_versions WHERE account = ? AND workflow = ? "
    "ORDER BY modified_on DESC, created_on DESC, id"
)
GRAPH_OF: Final = "SELECT graph FROM workflow_versions WHERE account = ? AND workflow = ? AND id = ? AND class_name = ?"
INSERT: Final = (
    f"INSERT INTO workflow_versions ({VERSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (account, workflow, id) DO UPDATE SET modified_on = excluded.modified_on, "
    "class_name = excluded.class_name, config = excluded.config, "
    "graph = COALESCE(excluded.graph, workflow_versions.graph)"
)
DELETE_OF_WORKFLOW: Final = "DELETE FROM workflow_versions WHERE account = ? AND workflow = ?"
RAN: Final = (
    "INSERT INTO instance_versions (instance_pk, version_id, first_ran_on, last_ran_on, divergence) "
    "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM instances WHERE pk = ? AND lease_token = ?) "
    "ON CONFLICT (instance_pk, version_id) DO UPDATE SET last_ran_on = excluded.last_ran_on, "
    "divergence = COALESCE(excluded.divergence, instance_versions.divergence)"
)
OF_INSTANCE: Final = (
    f"SELECT {INSTANCE_VERSION_COLUMNS} FROM instance_versions WHERE instance_pk = ? ORDER BY first_ran_on, version_id"
)


def pg(query: str) -> str:
    """The statement with PostgreSQL's placeholders."""
    return query.replace("?", "%s")


def version_from_row(row: tuple[Any, ...]) -> VersionRecord:
    """Map a row selected with :data:`VERSION_COLUMNS`."""
    return VersionRecord(*row)


def instance_version_from_row(row: tuple[Any, ...]) -> InstanceVersion:
    """Map a row selected with :data:`INSTANCE_VERSION_COLUMNS`."""
    return InstanceVersion(*row)


def _params(record: WorkflowRecord, graph: str | None) -> tuple[object, ...]:
    return (
        record.account,
        record.name,
        record.version_id,
        record.class_name,
        record.modified_on,
        record.modified_on,
        record.config,
        graph,
    )


def ran_params(pk: int, token: str, version_id: str, now: float, divergence: str | None) -> tuple[object, ...]:
    """The parameters of :data:`RAN`."""
    return (pk, version_id, now, now, divergence, pk, token)


def put_version(conn: sqlite3.Connection, record: WorkflowRecord, graph: str | None, previous: str | None) -> None:
    """Record that ``record.version_id`` became the workflow's current version (SQLite). A version registered
    without a diagram (a REST ``PUT`` changing settings) keeps the previous version's when the class is the same."""
    if graph is None and previous is not None:
        row = conn.execute(GRAPH_OF, (record.account, record.name, previous, record.class_name)).fetchone()
        graph = row[0] if row else None
    conn.execute(INSERT, _params(record, graph))


async def put_version_pg(conn: PgConn, record: WorkflowRecord, graph: str | None, previous: str | None) -> None:
    """:func:`put_version` on PostgreSQL."""
    if graph is None and previous is not None:
        cur = await conn.execute(pg(GRAPH_OF), (record.account, record.name, previous, record.class_name))
        row = await cur.fetchone()
        graph = row[0] if row else None
    await conn.execute(pg(INSERT), _params(record, graph))
