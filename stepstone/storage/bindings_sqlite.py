"""The binding tables on SQLite: KV pairs and queue messages, through the storage's group-committing writer.

Several processes sharing the file share the queues: a claim is one ``UPDATE ... RETURNING`` under SQLite's
write lock, so two processes never lease the same message.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING

from stepstone.storage.bindings_base import (
    BINDINGS_SCHEMA_VERSION,
    KVEntry,
    KVKey,
    NewMessage,
    QueueMessageRecord,
    Settlement,
    SettleOutcome,
)

if TYPE_CHECKING:
    from stepstone.storage.sqlite import SQLiteStorage

Conn = sqlite3.Connection

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS kv_entries (
        namespace TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        metadata TEXT,
        expiration REAL,
        PRIMARY KEY (namespace, key)
    )""",
    "CREATE INDEX IF NOT EXISTS kv_entries_expiring ON kv_entries (expiration) WHERE expiration IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS queue_messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        queue TEXT NOT NULL,
        body BLOB NOT NULL,
        content_type TEXT NOT NULL,
        sent_at REAL NOT NULL,
        visible_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_token TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS queue_messages_visible ON queue_messages (queue, visible_at, seq)",
    "CREATE TABLE IF NOT EXISTS once_claims (key TEXT PRIMARY KEY, expires_at REAL NOT NULL)",
)

_CLAIM = (
    "UPDATE queue_messages SET visible_at = ?, lease_token = ?, attempts = attempts + 1 WHERE seq IN "
    "(SELECT seq FROM queue_messages WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?) "
    "RETURNING seq, id, queue, body, content_type, sent_at, attempts, lease_token"
)


class SQLiteBindingStore:
    """:class:`~stepstone.storage.bindings_base.BindingStore` on a :class:`SQLiteStorage`'s file."""

    def __init__(self, storage: SQLiteStorage) -> None:
        self._storage = storage
        self._ready = False

    async def ensure_schema(self) -> None:
        """Create the tables once per process."""
        if self._ready:
            return

        def op(conn: Conn) -> None:
            row = conn.execute("SELECT value FROM stepstone_meta WHERE key = 'bindings_schema'").fetchone()
            if row is not None and int(row[0]) >= BINDINGS_SCHEMA_VERSION:
                return
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO stepstone_meta (key, value) VALUES ('bindings_schema', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(BINDINGS_SCHEMA_VERSION),),
            )

        await self._storage._write(op)
        self._ready = True

    # -- KV -----------------------------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str, *, now: float) -> KVEntry | None:
        """The live entry, or None."""
        await self.ensure_schema()
        row = await self._storage._read(
            lambda c: c.execute(
                "SELECT key, value, metadata, expiration FROM kv_entries WHERE namespace = ? AND key = ? "
                "AND (expiration IS NULL OR expiration > ?)",
                (namespace, key, now),
            ).fetchone()
        )
        return None if row is None else KVEntry(row[0], bytes(row[1]), row[2], row[3])

    async def kv_put(self, namespace: str, entry: KVEntry) -> None:
        """Insert or replace."""
        await self.ensure_schema()
        await self._storage._write(
            lambda c: c.execute(
                "INSERT OR REPLACE INTO kv_entries (namespace, key, value, metadata, expiration) "
                "VALUES (?, ?, ?, ?, ?)",
                (namespace, entry.key, entry.value, entry.metadata, entry.expiration),
            )
        )

    async def kv_delete(self, namespace: str, key: str) -> None:
        """Delete if present."""
        await self.ensure_schema()
        await self._storage._write(
            lambda c: c.execute("DELETE FROM kv_entries WHERE namespace = ? AND key = ?", (namespace, key))
        )

    async def kv_list(
        self, namespace: str, *, prefix: str, after: str | None, limit: int, now: float
    ) -> tuple[list[KVKey], bool]:
        """Keys in byte order (SQLite compares TEXT as UTF-8 bytes)."""
        await self.ensure_schema()
        bound, start = ("key > ?", after) if after is not None and after >= prefix else ("key >= ?", prefix)
        rows = await self._storage._read(
            lambda c: c.execute(
                f"SELECT key, expiration, metadata FROM kv_entries WHERE namespace = ? AND {bound} "
                "AND substr(key, 1, ?) = ? AND (expiration IS NULL OR expiration > ?) ORDER BY key LIMIT ?",
                (namespace, start, len(prefix), prefix, now, limit + 1),
            ).fetchall()
        )
        keys = [KVKey(r[0], r[1], r[2]) for r in rows[:limit]]
        return keys, len(rows) > limit

    async def kv_purge_expired(self, *, now: float) -> int:
        """Delete expired entries."""
        await self.ensure_schema()
        return int(
            await self._storage._write(
                lambda c: c.execute("DELETE FROM kv_entries WHERE expiration <= ?", (now,)).rowcount
            )
        )

    # -- Queues -------------------------------------------------------------------------------------
    async def queue_send(self, queue: str, messages: Sequence[NewMessage], *, now: float) -> None:
        """Insert the messages in one transaction."""
        await self.ensure_schema()
        rows = [(m.id, queue, m.body, m.content_type, now, now + m.delay_seconds) for m in messages]
        await self._storage._write(
            lambda c: c.executemany(
                "INSERT INTO queue_messages (id, queue, body, content_type, sent_at, visible_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        )

    async def queue_ready(self, queue: str, *, now: float, limit: int) -> tuple[int, float | None]:
        """Count (up to ``limit``) and the oldest visibility of the claimable messages."""
        await self.ensure_schema()
        row = await self._storage._read(
            lambda c: c.execute(
                "SELECT COUNT(*), MIN(visible_at) FROM (SELECT visible_at FROM queue_messages "
                "WHERE queue = ? AND visible_at <= ? ORDER BY visible_at, seq LIMIT ?)",
                (queue, now, limit),
            ).fetchone()
        )
        return int(row[0]), row[1]

    async def queue_claim(
        self, queue: str, *, now: float, limit: int, lease_seconds: float, token: str
    ) -> list[QueueMessageRecord]:
        """One UPDATE under the write lock."""
        await self.ensure_schema()
        rows = await self._storage._write(
            lambda c: c.execute(_CLAIM, (now + lease_seconds, token, queue, now, limit)).fetchall()
        )
        rows.sort(key=lambda r: r[0])
        return [QueueMessageRecord(r[1], r[2], bytes(r[3]), r[4], r[5], r[6], r[7]) for r in rows]

    async def queue_renew(self, ids: Sequence[str], *, token: str, until: float) -> int:
        """Extend the hiding of messages still leased with ``token``."""
        if not ids:
            return 0
        marks = ", ".join("?" * len(ids))
        return int(
            await self._storage._write(
                lambda c: (
                    c.execute(
                        f"UPDATE queue_messages SET visible_at = ? WHERE lease_token = ? AND id IN ({marks})",
                        (until, token, *ids),
                    ).rowcount
                )
            )
        )

    async def queue_settle(
        self,
        queue: str,
        settlements: Sequence[Settlement],
        *,
        now: float,
        max_retries: int,
        dead_letter_queue: str | None,
    ) -> SettleOutcome:
        """Acks and retries in one transaction."""

        def op(c: Conn) -> SettleOutcome:
            counts = {"acked": 0, "retried": 0, "dead_lettered": 0, "dropped": 0, "lost": 0}
            for s in settlements:
                row = c.execute(
                    "SELECT attempts FROM queue_messages WHERE id = ? AND lease_token = ?", (s.id, s.lease_token)
                ).fetchone()
                if row is None:
                    counts["lost"] += 1
                elif s.action == "ack":
                    c.execute("DELETE FROM queue_messages WHERE id = ?", (s.id,))
                    counts["acked"] += 1
                elif int(row[0]) <= max_retries:
                    c.execute(
                        "UPDATE queue_messages SET visible_at = ?, lease_token = NULL WHERE id = ?",
                        (now + s.delay_seconds, s.id),
                    )
                    counts["retried"] += 1
                elif dead_letter_queue:
                    c.execute(
                        "UPDATE queue_messages SET queue = ?, attempts = 0, visible_at = ?, lease_token = NULL "
                        "WHERE id = ?",
                        (dead_letter_queue, now, s.id),
                    )
                    counts["dead_lettered"] += 1
                else:
                    c.execute("DELETE FROM queue_messages WHERE id = ?", (s.id,))
                    counts["dropped"] += 1
            return SettleOutcome(**counts)

        return await self._storage._write(op)

    async def queue_depth(self, queue: str) -> int:
        """Every message of the queue."""
        await self.ensure_schema()
        row = await self._storage._read(
            lambda c: c.execute("SELECT COUNT(*) FROM queue_messages WHERE queue = ?", (queue,)).fetchone()
        )
        return int(row[0])

    async def claim_once(self, key: str, *, now: float, expires_at: float) -> bool:
        """Insert, or take over an expired claim, under the write lock."""
        await self.ensure_schema()

        def op(c: Conn) -> bool:
            c.execute("DELETE FROM once_claims WHERE key = ? AND expires_at <= ?", (key, now))
            return (
                c.execute(
                    "INSERT OR IGNORE INTO once_claims (key, expires_at) VALUES (?, ?)", (key, expires_at)
                ).rowcount
                == 1
            )

        return await self._storage._write(op)
