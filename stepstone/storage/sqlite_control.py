"""Named SQL of the SQLite backend: lifecycle control operations, the claim's candidate query, and the helpers
every write uses. Each function runs inside the writer's transaction on the connection it is given.

Instances are found by their key, ``(account, workflow, id)``: an operation made for one account never finds
another's instance, whatever its id.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from stepstone.errors import FencedError, InstanceNotFoundError, InvalidStateError
from stepstone.models import FINISHED, ROLLBACK_EVENT, Claim, EventRecord, InstanceRecord, Lease, StepRef
from stepstone.storage.base import ClaimResult, InstancePage, concurrency_limit, instance_filter, page_window
from stepstone.storage.counts_sql import SQLITE_BY_STATUS, SQLITE_ONE_STATUS, counted_total
from stepstone.storage.sqlite_schema import INSTANCE_COLUMNS, instance_from_row
from stepstone.storage.stream_sql import GAP, RESTART_FORGETS

Conn = sqlite3.Connection
Signal = Callable[[Conn, int, str, float], None]
"""Record a cross-process signal (``pk``, ``kind``, ``now``) in the caller's transaction."""

RELEASE = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"


def forget_events(conn: sqlite3.Connection, pk: int, delete: str, params: tuple[object, ...], now: float) -> None:
    """Delete some of an instance's event rows (``delete``); if its highest id went with them, a ``gap`` row keeps
    that id, so the next event's id is higher than every id a subscriber may hold as its cursor."""
    (highest,) = conn.execute("SELECT MAX(event_id) FROM instance_events WHERE instance_pk = ?", (pk,)).fetchone()
    conn.execute(delete, params)
    if highest is not None:
        conn.execute(
            "INSERT OR IGNORE INTO instance_events (instance_pk, event_id, type, at) VALUES (?, ?, ?, ?)",
            (pk, highest, GAP, now),
        )


def pause(conn: Conn, signal: Signal, account: str, workflow: str, instance_id: str, *, now: float) -> InstanceRecord:
    """Request a pause."""
    pk, status = find(conn, account, workflow, instance_id)
    if status == "running":
        conn.execute("UPDATE instances SET status = 'waitingForPause', modified_on = ? WHERE pk = ?", (now, pk))
    elif status in ("waiting", "queued"):
        set_paused(conn, pk, now)
    signal(conn, pk, "pause", now)
    return get(conn, pk)


def resume(conn: Conn, signal: Signal, account: str, workflow: str, instance_id: str, *, now: float) -> InstanceRecord:
    """Resume a paused or pausing instance."""
    pk, status = find(conn, account, workflow, instance_id)
    if status == "waitingForPause":
        conn.execute("UPDATE instances SET status = 'running', modified_on = ? WHERE pk = ?", (now, pk))
    elif status == "paused":
        paused_at = conn.execute("SELECT paused_at FROM instances WHERE pk = ?", (pk,)).fetchone()[0]
        shift = max(0.0, now - (paused_at or now))
        conn.execute(
            "UPDATE steps SET wake_at = wake_at + ? WHERE instance_pk = ? AND wake_at IS NOT NULL "
            "AND status IN ('waiting', 'retrying')",
            (shift, pk),
        )
        conn.execute(
            "UPDATE instances SET status = 'queued', runnable_at = ?, paused_at = NULL, modified_on = ? WHERE pk = ?",
            (now, now, pk),
        )
    signal(conn, pk, "resume", now)
    return get(conn, pk)


def terminate(
    conn: Conn,
    signal: Signal,
    account: str,
    workflow: str,
    instance_id: str,
    *,
    now: float,
    retention_ms: float,
    rollback: bool = False,
) -> InstanceRecord:
    """Terminate now, or (``rollback``) have a run roll the instance back first."""
    pk, status = find(conn, account, workflow, instance_id)
    if status in FINISHED:
        raise InvalidStateError(f"cannot terminate instance {instance_id!r}: it is already {status} (a finished state)")
    if rollback and _may_roll_back(conn, pk):
        requested = conn.execute(
            "SELECT 1 FROM events WHERE instance_pk = ? AND type = ? AND consumed_by IS NULL", (pk, ROLLBACK_EVENT)
        ).fetchone()
        if requested is None:
            conn.execute(
                "INSERT INTO events (instance_pk, type, payload, received_at) VALUES (?, ?, 'null', ?)",
                (pk, ROLLBACK_EVENT, now),
            )
        # the run in flight (if any) is fenced off and stopped; the next claim replays and rolls back
        conn.execute(
            "UPDATE instances SET status = 'queued', generation = generation + 1, runnable_at = ?, paused_at = NULL, "
            f"waiting_for = NULL, wait_types = NULL, {RELEASE}, modified_on = ? WHERE pk = ?",
            (now, now, pk),
        )
        signal(conn, pk, "abort", now)
        signal(conn, 0, "new", now)
        return get(conn, pk)
    conn.execute(
        "UPDATE instances SET status = 'terminated', generation = generation + 1, runnable_at = NULL, "
        f"waiting_for = NULL, wait_types = NULL, {RELEASE}, ended_on = ?, terminated_at = ?, modified_on = ?, "
        "expires_at = ? WHERE pk = ?",
        (now, now, now, now + retention_ms / 1000, pk),
    )
    signal(conn, pk, "abort", now)
    return get(conn, pk)


def _may_roll_back(conn: Conn, pk: int) -> bool:
    """Whether the instance has a completed step (one that may have registered an undo handler): without one a
    terminate with rollback has nothing to run, so it terminates at once (a queued instance, or one whose
    workflow no worker runs, is not left waiting for a run)."""
    row = conn.execute(
        "SELECT 1 FROM steps WHERE instance_pk = ? AND kind = 'do' AND status = 'success' LIMIT 1", (pk,)
    )
    return row.fetchone() is not None


def restart(
    conn: Conn,
    signal: Signal,
    account: str,
    workflow: str,
    instance_id: str,
    *,
    now: float,
    from_step: StepRef | None,
) -> InstanceRecord:
    """Restart fully or from a step."""
    pk, _ = find(conn, account, workflow, instance_id)
    if from_step is None:
        conn.execute("DELETE FROM steps WHERE instance_pk = ?", (pk,))
        conn.execute("DELETE FROM events WHERE instance_pk = ?", (pk,))
        forget_events(conn, pk, "DELETE FROM instance_events WHERE instance_pk = ?", (pk,), now)
        conn.execute("DELETE FROM instance_versions WHERE instance_pk = ?", (pk,))
    else:
        rows = conn.execute(
            "SELECT seq FROM steps WHERE instance_pk = ? AND kind = ? AND name = ? ORDER BY seq",
            (pk, from_step.kind, from_step.name),
        ).fetchall()
        if from_step.count < 1 or len(rows) < from_step.count:
            raise InvalidStateError(
                f'cannot restart instance {instance_id!r}: step "{from_step.name}" '
                f"(type {from_step.type}, count {from_step.count}) not found in execution history"
            )
        seq = rows[from_step.count - 1][0]
        forget_events(conn, pk, RESTART_FORGETS.replace("%s", "?"), (pk, pk, seq), now)
        conn.execute("DELETE FROM steps WHERE instance_pk = ? AND seq >= ?", (pk, seq))
    conn.execute(
        "UPDATE instances SET status = 'queued', generation = generation + 1, runnable_at = ?, "
        "output = NULL, error_name = NULL, error_message = NULL, error_traceback = NULL, started_on = NULL, "
        "ended_on = NULL, "
        f"paused_at = NULL, waiting_for = NULL, wait_types = NULL, {RELEASE}, expires_at = NULL, "
        "terminated_at = NULL, modified_on = ? WHERE pk = ?",
        (now, now, pk),
    )
    signal(conn, pk, "abort", now)
    signal(conn, 0, "new", now)
    return get(conn, pk)


def send_event(
    conn: Conn,
    signal: Signal,
    account: str,
    workflow: str,
    instance_id: str,
    *,
    event_type: str,
    payload: str,
    now: float,
) -> EventRecord:
    """Buffer an event and wake a waiter."""
    pk, status = find(conn, account, workflow, instance_id)
    if status in FINISHED:
        raise InvalidStateError(f"cannot send event {event_type!r} to instance {instance_id!r}: it is {status}")
    event_pk = conn.execute(
        "INSERT INTO events (instance_pk, type, payload, received_at) VALUES (?, ?, ?, ?)",
        (pk, event_type, payload, now),
    ).lastrowid
    conn.execute(
        "UPDATE instances SET runnable_at = ? WHERE pk = ? AND status = 'waiting' AND instr(wait_types, ?) > 0",
        (now, pk, f",{event_type},"),
    )
    assert event_pk is not None
    signal(conn, pk, "new", now)
    return EventRecord(event_pk, event_type, payload, now)


def delete_instances(conn: Conn, signal: Signal, account: str, workflow: str, ids: Sequence[str]) -> list[str]:
    """Delete instances and their state; the ids that existed."""
    found: list[str] = []
    pks: list[int] = []
    for instance_id in dict.fromkeys(ids):
        row = conn.execute(
            "SELECT pk FROM instances WHERE account = ? AND workflow = ? AND id = ?", (account, workflow, instance_id)
        ).fetchone()
        if row:
            found.append(instance_id)
            pks.append(row[0])
    delete_pks(conn, pks)
    for pk in pks:
        signal(conn, pk, "abort", time.time())
    return found


def purge_expired(conn: Conn, *, now: float, limit: int, budget_s: float = 0.0) -> tuple[int, bool]:
    """Delete instances past their retention, the earliest expired first, ``limit`` at a time until none is
    left or ``budget_s`` seconds went by; how many, and whether expired ones are left."""
    deadline = time.perf_counter() + budget_s
    total = 0
    while True:
        pks = [
            r[0]
            for r in conn.execute(
                "SELECT pk FROM instances WHERE expires_at <= ? ORDER BY expires_at LIMIT ?", (now, limit)
            )
        ]
        delete_pks(conn, pks)
        total += len(pks)
        if len(pks) < limit:
            return total, False
        if time.perf_counter() >= deadline:
            return total, True


def purge_signals(conn: Conn, *, now: float) -> None:
    """Delete signals every watcher has read."""
    # Signals are read within milliseconds by live watchers; keep a minute for slow ones.
    conn.execute("DELETE FROM signals WHERE seq < (SELECT COALESCE(MAX(seq), 0) FROM signals) - 10000")
    conn.execute("DELETE FROM signals WHERE at < ? AND seq < (SELECT MAX(seq) FROM signals)", (now - 60,))


def claim(
    conn: Conn,
    *,
    owner: str,
    now: float,
    lease_seconds: float,
    limit: int,
    workflows: Sequence[str],
    account_concurrency: int | None = None,
) -> ClaimResult:
    """Lease runnable instances of these workflows (in every account), earliest due first; with
    ``account_concurrency``, no account gets more than that many running (the writer's transaction orders claims)."""
    marks = ", ".join("?" * len(workflows))
    claims: list[Claim] = []
    takeovers = 0
    if limit > 0 and workflows:
        rows = _candidates(conn, now, limit, workflows)
        if account_concurrency is not None and rows:
            rows = _within_accounts(conn, rows, now, account_concurrency)
        takeovers = sum(1 for _, status in rows if status == "running")  # a lease that expired
        for pk, status in rows:
            if status == "waitingForPause":
                conn.execute(
                    "UPDATE instances SET status = 'paused', paused_at = ?, runnable_at = NULL, "
                    "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL, "
                    "modified_on = ? WHERE pk = ?",
                    (now, now, pk),
                )
                continue
            row = conn.execute(
                "UPDATE instances SET status = 'running', lease_owner = ?, lease_token = ?, "
                "lease_expires_at = ?, started_on = COALESCE(started_on, ?), modified_on = ?, "
                f"waiting_for = NULL, wait_types = NULL WHERE pk = ? RETURNING {INSTANCE_COLUMNS}",
                (owner, uuid.uuid4().hex, now + lease_seconds, now, now, pk),
            ).fetchone()
            record = instance_from_row(row)
            assert record.lease_token is not None
            claims.append(Claim(record, Lease(pk, record.lease_token, record.generation)))
    next_due = None
    if workflows:
        due = conn.execute(
            f"SELECT MIN(runnable_at) FROM instances WHERE runnable_at > ? AND workflow IN ({marks})",
            (now, *workflows),
        ).fetchone()[0]
        expiring = conn.execute(
            "SELECT MIN(lease_expires_at) FROM instances WHERE lease_expires_at IS NOT NULL "
            f"AND lease_owner != ? AND workflow IN ({marks})",
            (owner, *workflows),
        ).fetchone()[0]
        candidates = [t for t in (due, expiring) if t is not None]
        next_due = min(candidates) if candidates else None
    return ClaimResult(claims, next_due, takeovers)


def list_instances(
    conn: Conn,
    *,
    account: str,
    workflow: str,
    status: str | None,
    limit: int,
    offset: int,
    newest_first: bool,
    created_after: float | None,
    created_before: float | None,
) -> InstancePage:
    """A page of the account's workflow's instances by creation time, and how many matched."""
    counted = counted_total(status, created_after, created_before)
    cond, params, status = instance_filter(account, workflow, status, created_after, created_before, "?")
    if not counted:
        total = conn.execute(f"SELECT COUNT(*) FROM instances WHERE {cond}", params).fetchone()[0]
    elif status is None:
        total = sum(n for _, n in conn.execute(SQLITE_BY_STATUS, (account, workflow)))
    else:
        row = conn.execute(SQLITE_ONE_STATUS, (account, workflow, status)).fetchone()
        total = row[0] if row else 0
    desc, limit, offset, reverse = page_window(total, limit, offset, newest_first)
    order = "DESC" if desc else "ASC"
    rows = conn.execute(
        f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE {cond} "
        f"ORDER BY created_on {order}, pk {order} LIMIT ? OFFSET ?",
        [*params, limit, offset],
    ).fetchall()
    if reverse:
        rows.reverse()
    return InstancePage([instance_from_row(r) for r in rows], total)


def _candidates(conn: Conn, now: float, limit: int, workflows: Sequence[str]) -> list[tuple[int, str]]:
    """Due, unleased instances of these workflows in every account; a workflow (of one account) with a
    concurrency limit gets at most its free slots."""
    marks = ", ".join("?" * len(workflows))
    limits: dict[tuple[str, str], int] = {}
    for account, name, config in conn.execute(
        f"SELECT account, name, config FROM workflows WHERE name IN ({marks})", (*workflows,)
    ):
        if (lim := concurrency_limit(config)) is not None:
            limits[(account, name)] = lim
    due = "runnable_at <= ? AND (lease_expires_at IS NULL OR lease_expires_at < ?)"
    rows: list[tuple[float, int, str]] = []
    exclude = ""
    if limits:
        exclude = f" AND (account, workflow) NOT IN (VALUES {', '.join(['(?, ?)'] * len(limits))})"
    rows += conn.execute(
        f"SELECT runnable_at, pk, status FROM instances WHERE {due} AND workflow IN ({marks}){exclude} "
        "ORDER BY runnable_at LIMIT ?",
        (now, now, *workflows, *(part for key in limits for part in key), limit),
    ).fetchall()
    for (account, name), lim in sorted(limits.items()):
        (running,) = conn.execute(
            "SELECT COUNT(*) FROM instances WHERE account = ? AND workflow = ? "
            "AND status IN ('running', 'waitingForPause') AND lease_expires_at >= ?",
            (account, name, now),
        ).fetchone()
        if lim - running > 0:
            rows += conn.execute(
                f"SELECT runnable_at, pk, status FROM instances WHERE {due} AND account = ? AND workflow = ? "
                "ORDER BY runnable_at LIMIT ?",
                (now, now, account, name, min(limit, lim - running)),
            ).fetchall()
    return [(pk, status) for _, pk, status in sorted(rows)[:limit]]


def _within_accounts(conn: Conn, rows: list[tuple[int, str]], now: float, cap: int) -> list[tuple[int, str]]:
    """The candidates (in order) that keep each account's running instances at most ``cap``."""
    marks = ", ".join("?" * len(rows))
    account_of = dict(conn.execute(f"SELECT pk, account FROM instances WHERE pk IN ({marks})", [pk for pk, _ in rows]))
    running: dict[str, int] = {}
    for account in set(account_of.values()):
        # (account, workflow, status) is an index prefix: the account's running rows only.
        (running[account],) = conn.execute(
            "SELECT COUNT(*) FROM instances WHERE account = ? "
            "AND workflow IN (SELECT name FROM workflows WHERE account = ?) "
            "AND status IN ('running', 'waitingForPause') AND lease_expires_at >= ?",
            (account, account, now),
        ).fetchone()
    kept: list[tuple[int, str]] = []
    for pk, status in rows:
        account = account_of[pk]
        if status == "waitingForPause":  # it becomes paused, not running
            kept.append((pk, status))
        elif running[account] < cap:
            running[account] += 1
            kept.append((pk, status))
    return kept


def signals_after(conn: Conn, *, after: int) -> list[tuple[int, int, str]]:
    """Signals newer than ``after``: ``(seq, pk, kind)``."""
    rows: list[tuple[int, int, str]] = conn.execute(
        "SELECT seq, instance_pk, kind FROM signals WHERE seq > ? ORDER BY seq", (after,)
    ).fetchall()
    return rows


def fence(conn: Conn, lease: Lease) -> str:
    """The instance's status, or FencedError when the lease is no longer held."""
    row = conn.execute("SELECT lease_token, status FROM instances WHERE pk = ?", (lease.pk,)).fetchone()
    if row is None or row[0] != lease.token:
        raise FencedError(f"lease on instance {lease.pk} is no longer held")
    status: str = row[1]
    return status


def find(conn: Conn, account: str, workflow: str, instance_id: str) -> tuple[int, str]:
    """The pk and status of an instance of this account's workflow; InstanceNotFoundError otherwise."""
    row = conn.execute(
        "SELECT pk, status FROM instances WHERE account = ? AND workflow = ? AND id = ?",
        (account, workflow, instance_id),
    ).fetchone()
    if row is None:
        raise InstanceNotFoundError(f"instance {instance_id!r} not found in workflow {workflow!r}")
    return row[0], row[1]


def get(conn: Conn, pk: int) -> InstanceRecord:
    """The instance with this pk."""
    row: Any = conn.execute(f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE pk = ?", (pk,)).fetchone()
    return instance_from_row(row)


def set_paused(conn: Conn, pk: int, now: float) -> None:
    """Park the instance as ``paused``, releasing its lease."""
    conn.execute(
        f"UPDATE instances SET status = 'paused', paused_at = ?, runnable_at = NULL, {RELEASE}, modified_on = ? "
        "WHERE pk = ?",
        (now, now, pk),
    )


def delete_pks(conn: Conn, pks: Sequence[int]) -> None:
    """Delete instances with their steps and events (one statement per table per 500 instances)."""
    for i in range(0, len(pks), 500):
        chunk = list(pks[i : i + 500])
        marks = ", ".join("?" * len(chunk))
        conn.execute(f"DELETE FROM steps WHERE instance_pk IN ({marks})", chunk)
        conn.execute(f"DELETE FROM events WHERE instance_pk IN ({marks})", chunk)
        conn.execute(f"DELETE FROM instance_events WHERE instance_pk IN ({marks})", chunk)
        conn.execute(f"DELETE FROM instance_versions WHERE instance_pk IN ({marks})", chunk)
        conn.execute(f"DELETE FROM instances WHERE pk IN ({marks})", chunk)
