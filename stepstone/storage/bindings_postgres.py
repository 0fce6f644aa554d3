"""The binding tables on PostgreSQL: KV pairs and queue messages shared by every worker on the database.

Claims pick messages with ``FOR UPDATE SKIP LOCKED``, so racing consumers never wait on or share a message; keys
sort with ``COLLATE "C"`` (byte order, as Cloudflare lists them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stepstone.storage.bindings_base import (
    BINDINGS_SCHEMA_VERSION,
    KVEntry,
    KVKey,
    NewMessage,
    QueueMessageRecord,
    Settlement,
    SettleOutcome,
)
from stepstone.storage.postgres_control import fetch_all, fetch_maybe, fetch_one
from stepstone.storage.postgres_writer import Conn

if TYPE_CHECKING:
    from stepstone.storage.postgres import PostgresStorage

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE IF NOT EXISTS kv_entries (
        namespace TEXT NOT NULL,
        key TEXT COLLATE "C" NOT NULL,
        value BYTEA NOT NULL,
        metadata TEXT,
        expiration DOUBLE PRECISION,
        PRIMARY KEY (namespace, key)
    )""",
    "CREATE INDEX IF NOT EXISTS kv_entries_expiring ON kv_entries (expiration) WHERE expiration IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS queue_messages (
        seq BIGSERIAL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        queue TEXT NOT NULL,
        body BYTEA NOT NULL,
        content_type TEXT NOT NULL,
        sent_at DOUBLE PRECISION NOT NULL,
        visible_at DOUBLE PRECISION NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_token TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS queue_messages_visible ON queue_messages (queue, visible_at, seq)",
    "CREATE TABLE IF NOT EXISTS once_claims (key TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL)",
)

_CLAIM = (
    "WITH picked AS (SELECT seq FROM queue_messages WHERE queue = %s AND visible_at <= %s "
    "ORDER BY visible_at, seq LIMIT %s FOR UPDATE SKIP LOCKED) "
    "UPDATE queue_messages m SET visible_at = %s, lease_token = %s, attempts = m.attempts + 1 FROM picked "
    "WHERE m.seq = picked.seq RETURNING m.seq, m.id, m.queue, m.body, m.content_type, m.sent_at, m.attempts, "
    "m.lease_token"
)


class PostgresBindingStore:
    """:class:`~stepstone.storage.bindings_base.BindingStore` on a :class:`PostgresStorage`'s pool."""

    def __init__(self, storage: PostgresStorage) -> None:
        self._storage = storage
        self._ready = False

    async def ensure_schema(self) -> None:
        """Create the tables once per process, serialised across processes by an advisory lock."""
        if self._ready:
            return

        async def op(conn: Conn) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('stepstone_bindings_schema'))")
            row = await fetch_maybe(conn, "SELECT value FROM stepstone_meta WHERE key = 'bindings_schema'")
            if row is not None and int(row[0]) >= BINDINGS_SCHEMA_VERSION:
                return
            for statement in SCHEMA:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO stepstone_meta (key, value) VALUES ('bindings_schema', %s) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(BINDINGS_SCHEMA_VERSION),),
            )

        await self._storage._run(op)
        self._ready = True

    # -- KV -----------------------------------------------------------------------------------------
    async def kv_get(self, namespace: str, key: str, *, now: float) -> KVEntry | None:
        """The live entry, or None."""
        await self.ensure_schema()

        async def op(conn: Conn) -> KVEntry | None:
            row = await fetch_maybe(
                conn,
                "SELECT key, value, metadata, expiration FROM kv_entries WHERE namespace = %s AND key = %s "
                "AND (expiration IS NULL OR expiration > %s)",
                namespace,
                key,
                now,
            )
            return None if row is None else KVEntry(row[0], bytes(row[1]), row[2], row[3])

        return await self._storage._run(op, single=True)

    async def kv_put(self, namespace: str, entry: KVEntry) -> None:
        """Upsert."""
        await self.ensure_schema()

        async def op(conn: Conn) -> None:
            await conn.execute(
                "INSERT INTO kv_entries (namespace, key, value, metadata, expiration) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, metadata = excluded.metadata, "
                "expiration = excluded.expiration",
                (namespace, entry.key, entry.value, entry.metadata, entry.expiration),
            )

        await self._storage._run(op, single=True)

    async def kv_delete(self, namespace: str, key: str) -> None:
        """Delete if present."""
        await self.ensure_schema()

        async def op(conn: Conn) -> None:
            await conn.execute("DELETE FROM kv_entries WHERE namespace = %s AND key = %s", (namespace, key))

        await self._storage._run(op, single=True)

    async def kv_list(
        self, namespace: str, *, prefix: str, after: str | None, limit: int, now: float
    ) -> tuple[list[KVKey], bool]:
        """Keys in byte order."""
        await self.ensure_schema()
        bound, start = ("key > %s", after) if after is not None and after >= prefix else ("key >= %s", prefix)

        async def op(conn: Conn) -> list[tuple[Any, ...]]:
            return await fetch_all(
                conn,
                f"SELECT key, expiration, metadata FROM kv_entries WHERE namespace = %s AND {bound} "
                "AND left(key, %s) = %s AND (expiration IS NULL OR expiration > %s) ORDER BY key LIMIT %s",
                namespace,
                start,
                len(prefix),
                prefix,
                now,
                limit + 1,
            )

        rows = await self._storage._run(op, single=True)
        keys = [KVKey(str(r[0]), r[1], r[2]) for r in rows[:limit]]
        return keys, len(rows) > limit

    async def kv_purge_expired(self, *, now: float) -> int:
        """Delete expired entries."""
        await self.ensure_schema()

        async def op(conn: Conn) -> int:
            cur = await conn.execute("DELETE FROM kv_entries WHERE expiration <= %s", (now,))
            return cur.rowcount

        return await self._storage._run(op, single=True)

    # -- Queues -------------------------------------------------------------------------------------
    async def queue_send(self, queue: str, messages: Sequence[NewMessage], *, now: float) -> None:
        """Insert the messages in one transaction."""
        await self.ensure_schema()
        rows = [(m.id, queue, m.body, m.content_type, now, now + m.delay_seconds) for m in messages]

        async def op(conn: Conn) -> None:
            async with conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO queue_messages (id, queue, body, content_type, sent_at, visible_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    rows,
                )

        await self._storage._run(op, idempotent=False)

    async def queue_ready(self, queue: str, *, now: float, limit: int) -> tuple[int, float | None]:
        """Count (up to ``limit``) and the oldest visibility of the claimable messages."""
        await self.ensure_schema()

        async def op(conn: Conn) -> tuple[Any, ...]:
            return await fetch_one(
                conn,
                "SELECT COUNT(*), MIN(visible_at) FROM (SELECT visible_at FROM queue_messages "
                "WHERE queue = %s AND visible_at <= %s ORDER BY visible_at, seq LIMIT %s) v",
                queue,
                now,
                limit,
            )

        row = await self._storage._run(op, single=True)
        oldest = row[1]
        return int(row[0]), float(oldest) if isinstance(oldest, int | float) else None

    async def queue_claim(
        self, queue: str, *, now: float, limit: int, lease_seconds: float, token: str
    ) -> list[QueueMessageRecord]:
        """SKIP LOCKED: racing workers take disjoint messages."""
        await self.ensure_schema()

        async def op(conn: Conn) -> list[tuple[Any, ...]]:
            return await fetch_all(conn, _CLAIM, queue, now, limit, now + lease_seconds, token)

        rows = sorted(await self._storage._run(op), key=lambda r: int(r[0]))
        return [
            QueueMessageRecord(str(r[1]), str(r[2]), bytes(r[3]), str(r[4]), float(r[5]), int(r[6]), str(r[7]))
            for r in rows
        ]

    async def queue_renew(self, ids: Sequence[str], *, token: str, until: float) -> int:
        """Extend the hiding of messages still leased with ``token``."""
        if not ids:
            return 0

        async def op(conn: Conn) -> int:
            cur = await conn.execute(
                "UPDATE queue_messages SET visible_at = %s WHERE lease_token = %s AND id = ANY(%s)",
                (until, token, list(ids)),
            )
            return cur.rowcount

        return await self._storage._run(op, single=True)

    async def queue_settle(
        self,
        queue: str,
        settlements: Sequence[Settlement],
        *,
        now: float,
        max_retries: int,
        dead_letter_queue: str | None,
    ) -> SettleOutcome:
        """Acks and retries in one transaction, each message locked while it is decided."""

        async def op(conn: Conn) -> SettleOutcome:
            counts = {"acked": 0, "retried": 0, "dead_lettered": 0, "dropped": 0, "lost": 0}
            for s in settlements:
                row = await fetch_maybe(
                    conn,
                    "SELECT attempts FROM queue_messages WHERE id = %s AND lease_token = %s FOR UPDATE",
                    s.id,
                    s.lease_token,
                )
                if row is None:
                    counts["lost"] += 1
                elif s.action == "ack":
                    await conn.execute("DELETE FROM queue_messages WHERE id = %s", (s.id,))
                    counts["acked"] += 1
                elif int(row[0]) <= max_retries:
                    await conn.execute(
                        "UPDATE queue_messages SET visible_at = %s, lease_token = NULL WHERE id = %s",
                        (now + s.delay_seconds, s.id),
                    )
                    counts["retried"] += 1
                elif dead_letter_queue:
                    await conn.execute(
                        "UPDATE queue_messages SET queue = %s, attempts = 0, visible_at = %s, lease_token = NULL "
                        "WHERE id = %s",
                        (dead_letter_queue, now, s.id),
                    )
                    counts["dead_lettered"] += 1
                else:
                    await conn.execute("DELETE FROM queue_messages WHERE id = %s", (s.id,))
                    counts["dropped"] += 1
            return SettleOutcome(**counts)

        return await self._storage._run(op)

    async def queue_depth(self, queue: str) -> int:
        """Every message of the queue."""
        await self.ensure_schema()

        async def op(conn: Conn) -> tuple[Any, ...]:
            return await fetch_one(conn, "SELECT COUNT(*) FROM queue_messages WHERE queue = %s", queue)

        row = await self._storage._run(op, single=True)
        return int(row[0])

    async def claim_once(self, key: str, *, now: float, expires_at: float) -> bool:
        """One statement: insert, or take over a row whose claim expired."""
        await self.ensure_schema()

        async def op(conn: Conn) -> bool:
            row = await fetch_maybe(
                conn,
                "INSERT INTO once_claims (key, expires_at) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
                "SET expires_at = excluded.expires_at WHERE once_claims.expires_at <= %s RETURNING 1",
                key,
                expires_at,
                now,
            )
            return row is not None

        return await self._storage._run(op, single=True, idempotent=False)
