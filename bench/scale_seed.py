"""Large populations for ``bench.scale``, made by cloning one real instance's rows in SQL.

Running a million instances through the engine to get a million hibernating (or finished) ones would take the
whole time budget of the run; the state they leave is rows, so the benchmark runs one instance through the
engine to the state wanted and copies its ``instances``, ``steps`` and ``instance_events`` rows ``n`` times
(new ids ``<prefix><n>``, creation times one microsecond apart), in transactions of ``chunk`` instances. The
engine's own instances, created and run normally, then live among them.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

CHUNK = 20_000


def _sqlite_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _pg_columns(conn: Any, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = %s ORDER BY ordinal_position",
        (table,),
    ).fetchall()
    return [r[0] for r in rows]


def _instance_exprs(cols: list[str], mark: str, pad: str) -> str:
    out = []
    for c in cols:
        if c == "id":  # zero-padded: clones go into the id index in order
            out.append(f"{mark} || {pad}")
        elif c in ("created_on", "modified_on"):
            out.append(f"t.{c} + s.n * 0.000001")
        else:
            out.append(f"t.{c}")
    return ", ".join(out)


def clone_sqlite(path: str, template_pk: int, prefix: str, start: int, count: int, *, chunk: int = CHUNK) -> float:
    """Copy instance ``template_pk`` ``count`` times as ids ``prefix+start`` …; returns the seconds it took."""
    t0 = time.perf_counter()
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    try:
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA cache_size = -262144")  # 256 MiB: the indexes of a million rows stay in memory
        icols = [c for c in _sqlite_columns(conn, "instances") if c != "pk"]
        scols = [c for c in _sqlite_columns(conn, "steps") if c != "instance_pk"]
        # event ids are per instance on SQLite: a clone's copies keep the template's (its own queued row is id 1)
        ecols = [c for c in _sqlite_columns(conn, "instance_events") if c != "instance_pk"]
        exprs = _instance_exprs(icols, "?", "printf('%08d', s.n)")
        for lo in range(start, start + count, chunk):
            hi = min(start + count, lo + chunk) - 1
            conn.execute("BEGIN IMMEDIATE")
            before = conn.execute("SELECT COALESCE(MAX(pk), 0) FROM instances").fetchone()[0]
            conn.execute(
                "WITH RECURSIVE s(n) AS (SELECT ? UNION ALL SELECT n + 1 FROM s WHERE n < ?) "
                f"INSERT INTO instances ({', '.join(icols)}) SELECT {exprs} "
                "FROM instances t, s WHERE t.pk = ?",
                (lo, hi, prefix, template_pk),
            )
            # the insert trigger wrote each clone's 'workflow_queued' event; copy the template's others
            conn.execute(
                f"INSERT INTO steps (instance_pk, {', '.join(scols)}) "
                f"SELECT i.pk, {', '.join('st.' + c for c in scols)} "
                "FROM instances i, steps st WHERE i.pk > ? AND st.instance_pk = ?",
                (before, template_pk),
            )
            conn.execute(
                f"INSERT INTO instance_events (instance_pk, {', '.join(ecols)}) "
                f"SELECT i.pk, {', '.join('e.' + c for c in ecols)} FROM instances i, instance_events e "
                "WHERE i.pk > ? AND e.instance_pk = ? AND e.type != 'workflow_queued' ORDER BY i.pk, e.event_id",
                (before, template_pk),
            )
            conn.execute("COMMIT")
    finally:
        conn.close()
    return time.perf_counter() - t0


def clone_postgres(url: str, template_pk: int, prefix: str, start: int, count: int, *, chunk: int = CHUNK) -> float:
    """As :func:`clone_sqlite`, on PostgreSQL (triggers off in this session: the events are copied too)."""
    import psycopg

    t0 = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")
        counted = conn.execute("SELECT to_regclass('instance_count_deltas') IS NOT NULL").fetchone()[0]  # type: ignore[index]
        icols = [c for c in _pg_columns(conn, "instances") if c != "pk"]
        scols = [c for c in _pg_columns(conn, "steps") if c != "instance_pk"]
        ecols = [c for c in _pg_columns(conn, "instance_events") if c not in ("event_id", "instance_pk")]
        exprs = _instance_exprs(icols, "%s::text", "lpad(s.n::text, 8, '0')")
        for lo in range(start, start + count, chunk):
            hi = min(start + count, lo + chunk) - 1
            with conn.transaction():
                before = conn.execute("SELECT COALESCE(MAX(pk), 0) FROM instances").fetchone()[0]  # type: ignore[index]
                conn.execute(
                    f"INSERT INTO instances ({', '.join(icols)}) SELECT {exprs} "
                    "FROM instances t, generate_series(%s::bigint, %s::bigint) AS s(n) WHERE t.pk = %s",
                    (prefix, lo, hi, template_pk),
                )
                conn.execute(
                    f"INSERT INTO steps (instance_pk, {', '.join(scols)}) "
                    f"SELECT i.pk, {', '.join('st.' + c for c in scols)} "
                    "FROM instances i, steps st WHERE i.pk > %s AND st.instance_pk = %s",
                    (before, template_pk),
                )
                conn.execute(
                    f"INSERT INTO instance_events (instance_pk, {', '.join(ecols)}) "
                    f"SELECT i.pk, {', '.join('e.' + c for c in ecols)} FROM instances i, instance_events e "
                    "WHERE i.pk > %s AND e.instance_pk = %s ORDER BY i.pk, e.event_id",
                    (before, template_pk),
                )
                # the replica role skips the triggers that keep the status counts: add the clones' delta
                if counted:
                    conn.execute(
                        "INSERT INTO instance_count_deltas (account, workflow, status, n) "
                        "SELECT account, workflow, status, %s FROM instances WHERE pk = %s",
                        (hi - lo + 1, template_pk),
                    )
        conn.execute("ANALYZE instances")
    return time.perf_counter() - t0


def clone(url: str, template_pk: int, prefix: str, start: int, count: int) -> float:
    if url.startswith("sqlite:///"):
        return clone_sqlite(url[len("sqlite:///") :], template_pk, prefix, start, count)
    return clone_postgres(url, template_pk, prefix, start, count)


def expire_all(url: str, workflow: str, now: float) -> None:
    """Make every finished instance of ``workflow`` due for the retention purge."""
    sql = "UPDATE instances SET expires_at = {m} WHERE workflow = {m} AND status IN ('complete', 'errored')"
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :], isolation_level=None, timeout=60)
        try:
            conn.execute(sql.format(m="?"), (now - 1, workflow))
        finally:
            conn.close()
        return
    import psycopg

    with psycopg.connect(url, autocommit=True) as pg:
        pg.execute(sql.format(m="%s"), (now - 1, workflow))
