r"""Named SQL of the PostgreSQL backend: lifecycle control operations and the helpers every operation uses.

Instances are found by their key, ``(account, workflow, id)``: an operation made for one account never finds
another's instance, whatever its id.

Each control operation locks the instance's row first (``_find ... FOR UPDATE``), the lock a fenced run write
holds while it checks its lease, and ``pg_notify``\s the change in its own transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stepstone.errors import InstanceNotFoundError, InvalidStateError
from stepstone.models import FINISHED, ROLLBACK_EVENT, EventRecord, InstanceRecord, StepRef
from stepstone.storage.base import concurrency_limit
from stepstone.storage.counts_sql import FOLD_LOCK, POSTGRES_BY_STATUS, POSTGRES_FOLD
from stepstone.storage.postgres_writer import Conn
from stepstone.storage.sqlite_schema import INSTANCE_COLUMNS, instance_from_row
from stepstone.storage.stream_sql import RESTART_FORGETS

RELEASE = "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL"


async def pause(
    conn: Conn, channel: str, account: str, workflow: str, instance_id: str, *, now: float
) -> InstanceRecord:
    """Request a pause."""
    pk, status = await _find(conn, account, workflow, instance_id)
    if status == "running":
        await conn.execute("UPDATE instances SET status = 'waitingForPause', modified_on = %s WHERE pk = %s", (now, pk))
        await notify(conn, channel, pk, "pause")
    elif status in ("waiting", "queued"):
        await set_paused(conn, pk, now)
    return await _get(conn, pk)


async def resume(
    conn: Conn, channel: str, account: str, workflow: str, instance_id: str, *, now: float
) -> InstanceRecord:
    """Resume a paused or pausing instance."""
    pk, status = await _find(conn, account, workflow, instance_id)
    if status == "waitingForPause":
        await conn.execute("UPDATE instances SET status = 'running', modified_on = %s WHERE pk = %s", (now, pk))
        await notify(conn, channel, pk, "resume")
    elif status == "paused":
        (paused_at,) = await fetch_one(conn, "SELECT paused_at FROM instances WHERE pk = %s", pk)
        shift = max(0.0, now - (paused_at or now))
        await conn.execute(
            "UPDATE steps SET wake_at = wake_at + %s WHERE instance_pk = %s AND wake_at IS NOT NULL "
            "AND status IN ('waiting', 'retrying')",
            (shift, pk),
        )
        await conn.execute(
            "UPDATE instances SET status = 'queued', runnable_at = %s, paused_at = NULL, "
            "modified_on = %s WHERE pk = %s",
            (now, now, pk),
        )
        await notify(conn, channel, pk, "resume")
    return await _get(conn, pk)


async def terminate(
    conn: Conn,
    channel: str,
    account: str,
    workflow: str,
    instance_id: str,
    *,
    now: float,
    retention_ms: float,
    rollback: bool = False,
) -> InstanceRecord:
    """Terminate now, or (``rollback``) have a run roll the instance back first."""
    pk, status = await _find(conn, account, workflow, instance_id)
    if status in FINISHED:
        raise InvalidStateError(f"cannot terminate instance {instance_id!r}: it is already {status} (a finished state)")
    if rollback and await fetch_maybe(
        # without a completed step (one that may have registered an undo handler) there is nothing to roll back
        conn,
        "SELECT 1 FROM steps WHERE instance_pk = %s AND kind = 'do' AND status = 'success' LIMIT 1",
        pk,
    ):
        await conn.execute(
            "INSERT INTO events (instance_pk, type, payload, received_at) SELECT %s, %s, 'null', %s "
            "WHERE NOT EXISTS (SELECT 1 FROM events WHERE instance_pk = %s AND type = %s AND consumed_by IS NULL)",
            (pk, ROLLBACK_EVENT, now, pk, ROLLBACK_EVENT),
        )
        # the run in flight (if any) is fenced off and stopped; the next claim replays and rolls back
        await conn.execute(
            "UPDATE instances SET status = 'queued', generation = generation + 1, runnable_at = %s, "
            f"paused_at = NULL, waiting_for = NULL, wait_types = NULL, {RELEASE}, modified_on = %s WHERE pk = %s",
            (now, now, pk),
        )
        await notify(conn, channel, pk, "abort")
        return await _get(conn, pk)
    await conn.execute(
        "UPDATE instances SET status = 'terminated', generation = generation + 1, runnable_at = NULL, "
        f"waiting_for = NULL, wait_types = NULL, {RELEASE}, ended_on = %s, terminated_at = %s, "
        "modified_on = %s, expires_at = %s WHERE pk = %s",
        (now, now, now, now + retention_ms / 1000, pk),
    )
    await notify(conn, channel, pk, "abort")
    # a child's parent: the finish trigger made it runnable
    await conn.execute(
        "SELECT pg_notify(%s, parent_pk::text || ':new') FROM instance_links WHERE child_pk = %s", (channel, pk)
    )
    return await _get(conn, pk)


async def restart(
    conn: Conn, channel: str, account: str, workflow: str, instance_id: str, *, now: float, from_step: StepRef | None
) -> InstanceRecord:
    """Restart fully or from a step."""
    pk, _ = await _find(conn, account, workflow, instance_id)
    if from_step is None:
        await conn.execute("DELETE FROM steps WHERE instance_pk = %s", (pk,))
        await conn.execute("DELETE FROM events WHERE instance_pk = %s", (pk,))
        await conn.execute("DELETE FROM instance_events WHERE instance_pk = %s", (pk,))
        await conn.execute("DELETE FROM instance_versions WHERE instance_pk = %s", (pk,))
    else:
        rows = await fetch_all(
            conn,
            "SELECT seq FROM steps WHERE instance_pk = %s AND kind = %s AND name = %s ORDER BY seq",
            pk,
            from_step.kind,
            from_step.name,
        )
        if from_step.count < 1 or len(rows) < from_step.count:
            raise InvalidStateError(
                f'cannot restart instance {instance_id!r}: step "{from_step.name}" '
                f"(type {from_step.type}, count {from_step.count}) not found in execution history"
            )
        seq = rows[from_step.count - 1][0]
        await conn.execute(RESTART_FORGETS, (pk, pk, seq))
        await conn.execute("DELETE FROM steps WHERE instance_pk = %s AND seq >= %s", (pk, seq))
    await conn.execute(
        "UPDATE instances SET status = 'queued', generation = generation + 1, runnable_at = %s, "
        "output = NULL, error_name = NULL, error_message = NULL, error_traceback = NULL, started_on = NULL, "
        "ended_on = NULL, "
        f"paused_at = NULL, waiting_for = NULL, wait_types = NULL, {RELEASE}, expires_at = NULL, "
        "terminated_at = NULL, modified_on = %s WHERE pk = %s",
        (now, now, pk),
    )
    await notify(conn, channel, pk, "abort")
    return await _get(conn, pk)


async def send_event(
    conn: Conn,
    channel: str,
    account: str,
    workflow: str,
    instance_id: str,
    *,
    event_type: str,
    payload: str,
    now: float,
) -> EventRecord:
    """Buffer an event and wake a waiter."""
    pk, status = await _find(conn, account, workflow, instance_id)
    if status in FINISHED:
        raise InvalidStateError(f"cannot send event {event_type!r} to instance {instance_id!r}: it is {status}")
    (event_pk,) = await fetch_one(
        conn,
        "INSERT INTO events (instance_pk, type, payload, received_at) VALUES (%s, %s, %s, %s) RETURNING pk",
        pk,
        event_type,
        payload,
        now,
    )
    await conn.execute(
        "UPDATE instances SET runnable_at = %s WHERE pk = %s AND status = 'waiting' AND strpos(wait_types, %s) > 0",
        (now, pk, f",{event_type},"),
    )
    await notify(conn, channel, pk, "new")
    return EventRecord(int(event_pk), event_type, payload, now)


async def delete_instances(conn: Conn, channel: str, account: str, workflow: str, ids: Sequence[str]) -> list[str]:
    """Delete instances and their state."""
    rows = await fetch_all(
        conn,
        "SELECT id, pk FROM instances WHERE account = %s AND workflow = %s AND id = ANY(%s) ORDER BY pk FOR UPDATE",
        account,
        workflow,
        list(dict.fromkeys(ids)),
    )
    found = dict(rows)
    await delete_pks(conn, list(found.values()))
    for pk in found.values():
        await notify(conn, channel, pk, "abort")
    return [i for i in dict.fromkeys(ids) if i in found]


async def purge_expired(conn: Conn, *, now: float, limit: int) -> int:
    """Delete at most ``limit`` instances past their retention, the earliest expired first; how many."""
    rows = await fetch_all(
        conn,
        # the index's order: no sort of every expired row per batch
        "SELECT pk FROM instances WHERE expires_at <= %s ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED",
        now,
        limit,
    )
    await delete_pks(conn, [r[0] for r in rows])
    return len(rows)


async def candidates(conn: Conn, *, now: float, limit: int, names: list[str]) -> list[tuple[Any, ...]]:
    """Due, unleased rows to claim (in every account), locked; at most each limited workflow's free slots
    (a workflow's limit holds per account: ``(account, name)`` is the workflow)."""
    configs = await fetch_all(conn, "SELECT account, name, config FROM workflows WHERE name = ANY(%s)", names)
    limits = {(a, n): lim for a, n, config in configs if (lim := concurrency_limit(config)) is not None}
    limited = sorted(limits)
    due = "runnable_at <= %s AND (lease_expires_at IS NULL OR lease_expires_at < %s)"
    # Every instance of these workflows but those of a limited (account, workflow).
    rows: list[tuple[Any, ...]] = await fetch_all(
        conn,
        f"SELECT pk, status, runnable_at FROM instances WHERE {due} AND workflow = ANY(%s) "
        "AND (account, workflow) NOT IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
        "ORDER BY runnable_at LIMIT %s FOR UPDATE SKIP LOCKED",
        now,
        now,
        names,
        [a for a, _ in limited],
        [n for _, n in limited],
        limit,
    )
    if limited:
        # Claims of a limited workflow take turns on its row, so counts never race.
        await conn.execute(
            "SELECT name FROM workflows WHERE (account, name) IN (SELECT * FROM unnest(%s::text[], %s::text[])) "
            "ORDER BY account, name FOR UPDATE",
            ([a for a, _ in limited], [n for _, n in limited]),
        )
        running = {
            (a, n): int(count)
            for a, n, count in await fetch_all(
                conn,
                "SELECT account, workflow, COUNT(*) FROM instances WHERE workflow = ANY(%s) "
                "AND status IN ('running', 'waitingForPause') AND lease_expires_at >= %s "
                "GROUP BY account, workflow",
                sorted({n for _, n in limited}),
                now,
            )
        }
        for account, name in limited:
            slots = min(limit, limits[(account, name)] - running.get((account, name), 0))
            if slots > 0:
                rows += await fetch_all(
                    conn,
                    f"SELECT pk, status, runnable_at FROM instances WHERE {due} AND account = %s "
                    "AND workflow = %s ORDER BY runnable_at LIMIT %s FOR UPDATE SKIP LOCKED",
                    now,
                    now,
                    account,
                    name,
                    slots,
                )
    rows.sort(key=lambda r: (r[2], r[0]))
    return rows[:limit]


async def within_accounts(
    conn: Conn, rows: list[tuple[Any, ...]], *, now: float, cap: int, limit: int
) -> list[tuple[Any, ...]]:
    """The candidate rows (in order) that keep each account's running instances at most ``cap``.

    The running count is read first without a lock. Only an account this claim could take past its cap
    (``running + limit > cap``) is locked (a transaction advisory lock per account) and counted again, so claims
    far below the cap never wait for each other; near it they take turns and the cap is exact.
    """
    pks = [r[0] for r in rows]
    account_of = dict(await fetch_all(conn, "SELECT pk, account FROM instances WHERE pk = ANY(%s)", pks))
    accounts = sorted(set(account_of.values()))
    count_sql = (
        "SELECT account, COUNT(*) FROM instances WHERE account = ANY(%s) "
        "AND status IN ('running', 'waitingForPause') AND lease_expires_at >= %s GROUP BY account"
    )
    running = {a: int(n) for a, n in await fetch_all(conn, count_sql, accounts, now)}
    near = [a for a in accounts if running.get(a, 0) + limit > cap]
    if near:
        for account in near:  # sorted: two claimers lock accounts in the same order
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"stepstone:account:{account}",)
            )
        running.update({a: int(n) for a, n in await fetch_all(conn, count_sql, near, now)})
    kept: list[tuple[Any, ...]] = []
    for row in rows:
        account = account_of[row[0]]
        if row[1] == "waitingForPause":  # it becomes paused, not running
            kept.append(row)
        elif running.get(account, 0) < cap:
            running[account] = running.get(account, 0) + 1
            kept.append(row)
    return kept


async def notify(conn: Conn, channel: str, pk: int, kind: str) -> None:
    """Tell every listening worker, when this transaction commits, that instance ``pk`` changed."""
    await conn.execute("SELECT pg_notify(%s, %s)", (channel, f"{pk}:{kind}"))


async def delete_pks(conn: Conn, pks: Sequence[int]) -> None:
    """Delete instances with their steps and events."""
    if pks:
        await conn.execute("DELETE FROM steps WHERE instance_pk = ANY(%s)", (list(pks),))
        await conn.execute("DELETE FROM events WHERE instance_pk = ANY(%s)", (list(pks),))
        await conn.execute("DELETE FROM instance_events WHERE instance_pk = ANY(%s)", (list(pks),))
        await conn.execute("DELETE FROM instance_versions WHERE instance_pk = ANY(%s)", (list(pks),))
        await conn.execute("DELETE FROM instances WHERE pk = ANY(%s)", (list(pks),))


async def fetch_all(conn: Conn, query: str, *params: object) -> list[tuple[Any, ...]]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


async def fetch_maybe(conn: Conn, query: str, *params: object) -> tuple[Any, ...] | None:
    cur = await conn.execute(query, params)
    return await cur.fetchone()


async def fetch_one(conn: Conn, query: str, *params: object) -> tuple[Any, ...]:
    row = await fetch_maybe(conn, query, *params)
    assert row is not None
    return row


async def _find(conn: Conn, account: str, workflow: str, instance_id: str) -> tuple[int, str]:
    row = await fetch_maybe(
        conn,
        "SELECT pk, status FROM instances WHERE account = %s AND workflow = %s AND id = %s FOR UPDATE",
        account,
        workflow,
        instance_id,
    )
    if row is None:
        raise InstanceNotFoundError(f"instance {instance_id!r} not found in workflow {workflow!r}")
    return int(row[0]), str(row[1])


async def _get(conn: Conn, pk: int) -> InstanceRecord:
    return instance_from_row(await fetch_one(conn, f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE pk = %s", pk))


async def set_paused(conn: Conn, pk: int, now: float) -> None:
    await conn.execute(
        f"UPDATE instances SET status = 'paused', paused_at = %s, runnable_at = NULL, {RELEASE}, "
        "modified_on = %s WHERE pk = %s",
        (now, now, pk),
    )


async def status_counts(conn: Conn, account: str, workflow: str) -> tuple[dict[str, int], int]:
    """The workflow's instances per status (folded counts plus unfolded deltas, one snapshot), and how many
    delta rows were summed (see :mod:`stepstone.storage.counts_sql`)."""
    rows = await fetch_all(conn, POSTGRES_BY_STATUS, account, workflow, account, workflow)
    counts = {status: int(n) for status, n, _ in rows if int(n)}
    return counts, sum(int(d) for _, _, d in rows)


async def fold_counts(conn: Conn, account: str | None = None, workflow: str | None = None) -> None:
    """Move delta rows (one workflow's, or all) into the folded counts; skipped while another fold runs."""
    cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (FOLD_LOCK,))
    row = await cur.fetchone()
    if not row or not row[0]:
        return
    if workflow is None:
        await conn.execute(POSTGRES_FOLD.format(where=""))
    else:
        await conn.execute(POSTGRES_FOLD.format(where="WHERE account = %s AND workflow = %s"), (account, workflow))
