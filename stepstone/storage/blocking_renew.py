"""Lease renewal from a thread that is not the event loop's (the loop watchdog's), on a connection of its own.

While an event loop is blocked, nothing it owns (its write connection, its pool) can make progress, so the
watchdog renews the worker's leases over a separate synchronous connection, opened on first use and kept. The
statements are the async renewals' ones: extend a lease only while its token still matches, rows locked in pk
order (PostgreSQL), so a renewal never revives a lease another worker took over and never deadlocks; a row
locked by someone else is skipped, never waited for (the watchdog must keep watching).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import Any

from stepstone.errors import StorageError
from stepstone.models import Lease

# SKIP LOCKED: a row locked now is most likely locked by this very worker's own renewal or write, stuck
# mid-transaction behind the blocked loop (and a locked row cannot be claimed by another worker either); it
# is renewed on the next round instead of making the watchdog wait for a loop that does not answer.
_PG_RENEW = (
    "WITH l AS (SELECT pk, token FROM unnest(%s::bigint[], %s::text[]) AS l(pk, token)), "
    "locked AS (SELECT i.pk FROM instances i JOIN l ON i.pk = l.pk ORDER BY i.pk FOR UPDATE OF i SKIP LOCKED) "
    "UPDATE instances i SET lease_expires_at = GREATEST(i.lease_expires_at, %s) FROM l "
    "WHERE i.pk = l.pk AND i.lease_token = l.token AND i.pk IN (SELECT pk FROM locked) RETURNING i.pk"
)


class BlockingRenewer:
    """Renews leases synchronously over one connection made by ``connect`` (``sqlite`` or ``postgres``)."""

    def __init__(self, kind: str, connect: Callable[[], Any]) -> None:
        self._kind = kind
        self._connect = connect
        self._conn: Any = None
        self._lock = threading.Lock()

    def renew(self, leases: Sequence[Lease], until: float) -> set[int]:
        """Extend the leases still held (and not locked right now); returns their pks. Raises StorageError
        when the database fails."""
        ordered = sorted(leases, key=lambda lease: lease.pk)
        with self._lock:
            try:
                if self._conn is None:
                    self._conn = self._connect()
                if self._kind == "sqlite":
                    return self._renew_sqlite(ordered, until)
                return self._renew_postgres(ordered, until)
            except Exception as exc:
                self._drop()
                if isinstance(exc, StorageError):
                    raise
                raise StorageError(f"lease renewal failed: {exc}") from exc

    def _renew_sqlite(self, leases: Sequence[Lease], until: float) -> set[int]:
        conn: sqlite3.Connection = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            held = {
                lease.pk
                for lease in leases
                if conn.execute(
                    "UPDATE instances SET lease_expires_at = max(COALESCE(lease_expires_at, 0), ?) "
                    "WHERE pk = ? AND lease_token = ?",
                    (until, lease.pk, lease.token),
                ).rowcount
                == 1
            }
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return held

    def _renew_postgres(self, leases: Sequence[Lease], until: float) -> set[int]:
        conn = self._conn
        with conn.transaction():
            rows = conn.execute(_PG_RENEW, ([lease.pk for lease in leases], [lease.token for lease in leases], until))
            return {row[0] for row in rows.fetchall()}

    def close(self) -> None:
        """Close the connection (if one was opened)."""
        with self._lock:
            self._drop()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a broken connection: nothing more to do
                conn.close()
