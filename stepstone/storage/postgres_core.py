"""The PostgreSQL backend's core: the pool, the group writer, the transactor with its retries, the LISTEN
connection for signals, and the instance event stream (:class:`PostgresCore`, the base of
:class:`~stepstone.storage.postgres.PostgresStorage`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from stepstone.errors import (
    InstanceNotFoundError,
    StorageError,
)
from stepstone.models import (
    HistoryEvent,
    InstanceRecord,
)
from stepstone.storage.base import redact_url
from stepstone.storage.bell import Bell, StreamWaiter
from stepstone.storage.blobs import BlobStore
from stepstone.storage.blobs_postgres import PostgresBlobStore
from stepstone.storage.blocking_renew import BlockingRenewer
from stepstone.storage.postgres_control import fetch_all
from stepstone.storage.postgres_schema import migrate
from stepstone.storage.postgres_writer import Conn, GroupWriter, Transactor
from stepstone.storage.sqlite_schema import (
    INSTANCE_COLUMNS,
    instance_from_row,
)
from stepstone.storage.stream_sql import STREAM_EVENTS, first_row, history_events

T = TypeVar("T")
log = logging.getLogger("stepstone.storage.postgres")
_READ_STREAM = (
    "SELECT "
    + ", ".join(f"i.{c}" for c in INSTANCE_COLUMNS.split(", "))
    + ", x.* FROM instances i LEFT JOIN LATERAL ("
    + STREAM_EVENTS.replace("e.instance_pk = %s", "e.instance_pk = i.pk")
    + ") x ON true WHERE i.account = %s AND i.workflow = %s AND i.id = %s ORDER BY x.event_id"
)
_INSTANCE_WIDTH = len(INSTANCE_COLUMNS.split(", "))


class PostgresCore:
    """Storage on PostgreSQL.

    Args:
        url: ``postgresql://user:password@host:port/dbname``.
        schema: keep the tables in this schema (created if missing) instead of the connection's default;
            signals then use the channel ``stepstone:<schema>`` instead of ``stepstone``.
        min_size: connections the pool keeps open.
        max_size: connections the pool opens at most.
        retry_for: how long to keep retrying while the server is unreachable before raising StorageError.
    """

    purge_batch = 1000
    """Instances the retention purge deletes per transaction."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        min_size: int = 1,
        max_size: int = 10,
        retry_for: float = 60.0,
    ) -> None:
        self.url = url
        self.schema = schema
        self.channel = "stepstone" if schema is None else f"stepstone:{schema}"
        self._kwargs: dict[str, Any] = {"autocommit": False}
        if schema is not None:
            self._kwargs["options"] = f"-c search_path={schema}"
        self._pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            url, min_size=min_size, max_size=max_size, kwargs=self._kwargs, open=False, timeout=5.0
        )
        self._tx = Transactor(self._pool, retry_for=retry_for)
        self._writer = GroupWriter(self._connect_writer, retry_for=retry_for)
        self._done: asyncio.Future[None] | None = None
        self._listener: asyncio.Task[None] | None = None
        self._on_signal: Callable[[int, str], None] | None = None
        self._bell = Bell()
        self._bell.on_first_waiter = self._ensure_listener
        self.events_channel = "stepstone_events:public"
        """The channel the ``instance_events`` trigger notifies: ``stepstone_events:<schema of the tables>``."""
        # The watchdog's connection: never wait long, it must keep watching the loop.
        options = f"{self._kwargs.get('options', '')} -c statement_timeout=2000 -c lock_timeout=1000".strip()
        renew_kwargs = {**self._kwargs, "options": options}
        self._renewer = BlockingRenewer(
            "postgres", lambda: psycopg.connect(self.url, connect_timeout=2, **renew_kwargs)
        )
        self.blobs: BlobStore = PostgresBlobStore(self)
        """Streamed step outputs, in a chunk table (:mod:`stepstone.storage.blobs_postgres`)."""
        self._open = False

    # -- lifecycle ------------------------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, create or migrate the schema (refusing a newer one), start the writer."""
        try:
            async with await psycopg.AsyncConnection.connect(self.url, **self._kwargs) as conn:
                await migrate(conn, self.schema)
                cur = await conn.execute("SELECT current_schema()")
                row = await cur.fetchone()
                self.events_channel = f"stepstone_events:{row[0] if row else 'public'}"
            await self._pool.open(wait=True, timeout=30.0)
        except psycopg.Error as exc:
            raise StorageError(f"cannot open PostgreSQL database {redact_url(self.url)}: {exc}") from exc
        except Exception as exc:
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot open PostgreSQL database {redact_url(self.url)}: {exc}") from exc
        try:
            await self._writer.start()
        except psycopg.Error as exc:
            await self._pool.close()
            raise StorageError(f"cannot open PostgreSQL database {redact_url(self.url)}: {exc}") from exc
        self._open = True
        await self.blobs.sweep(now=time.time())

    async def _connect_writer(self) -> Conn:
        # Autocommit: the writer sends BEGIN/COMMIT itself, in the same pipeline as the batch's statements.
        kwargs = {**self._kwargs, "autocommit": True}
        conn: Conn = await psycopg.AsyncConnection.connect(self.url, **kwargs)
        return conn

    async def close(self) -> None:
        """Commit queued writes, stop listening, close the pool."""
        if not self._open:
            return
        await self.blobs.close()
        self._open = False
        await self._writer.stop()
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        await asyncio.to_thread(self._renewer.close)
        await self._pool.close()

    async def subscribe(self, on_signal: Callable[[int, str], None]) -> None:
        """``LISTEN`` for control operations of every process; reconnects with backoff."""
        self._on_signal = on_signal
        self._ensure_listener()

    def _ensure_listener(self) -> None:
        if self._listener is None and self._open:
            self._listener = asyncio.create_task(self._listen(), name="stepstone-pg-listen")

    async def _listen(self) -> None:
        """One connection ``LISTEN``s for control signals and for stream events (``events_channel``)."""
        delay = 0.05
        connected_once = False
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.events_channel)))
                    delay = 0.05
                    if connected_once:
                        # notifications sent while we were away are lost: look now
                        if self._on_signal is not None:
                            self._on_signal(0, "new")
                        self._bell.ring(None)
                    connected_once = True
                    async for note in conn.notifies():
                        if note.channel == self.events_channel:
                            if note.payload.isdigit():
                                self._bell.ring((int(note.payload),))
                            continue
                        pk_text, _, kind = note.payload.partition(":")
                        if pk_text.isdigit() and kind and self._on_signal is not None:
                            self._on_signal(int(pk_text), kind)
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost (%s); reconnecting in %.2fs", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, idempotent: bool = True, single: bool = False) -> T:
        return await self._tx.run(fn, idempotent=idempotent, single=single)

    # -- the instance event stream --------------------------------------------------------------------
    async def read_stream(
        self, account: str, workflow: str, instance_id: str, *, after: int, limit: int
    ) -> tuple[InstanceRecord, list[HistoryEvent]]:
        """The instance and its events after ``after``, in one statement."""
        args = (first_row(after), limit, account, workflow, instance_id)
        rows = await self._run(lambda c: fetch_all(c, _READ_STREAM, *args), single=True)
        if not rows:
            raise InstanceNotFoundError(f"instance {instance_id!r} not found in workflow {workflow!r}")
        inst = instance_from_row(rows[0][:_INSTANCE_WIDTH])
        events = [history_events(r[_INSTANCE_WIDTH:], after) for r in rows if r[_INSTANCE_WIDTH] is not None]
        return inst, [event for row_events in events for event in row_events]

    def stream_waiter(self, pk: int) -> StreamWaiter:
        """Wake-ups when any process commits an event of ``pk`` (the ``instance_events`` trigger's NOTIFY)."""
        return self._bell.waiter(pk)

    @property
    def commit_stats(self) -> tuple[int, int]:
        """(commits, writes) made by the group writer so far."""
        return self._writer.commits, self._writer.writes
