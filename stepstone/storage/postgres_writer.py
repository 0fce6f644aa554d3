"""Transactions against PostgreSQL: retried across server restarts, and group-committed for a run's writes.

:class:`Transactor` runs a function of a connection in one transaction, on a pooled connection. A connection
that breaks (the server restarted, the network dropped) or a transaction PostgreSQL aborted (deadlock,
serialization failure) is retried with exponential backoff for up to ``retry_for`` seconds, so a restart of
the database is invisible to the engine as long as it comes back in time.

:class:`GroupWriter` is one task per storage that owns the writes made on behalf of runs (steps, suspends,
finishes). It takes every pending write, runs them in one transaction and commits once, then resolves each
caller's future: concurrent instances share commits, and a write nobody awaits (``put_step(durable=False)``)
stays ordered before every later write of the same storage.

Every function run here must be safe to run again after a failed or unknown commit: the group-committed ops
are upserts or fenced updates (a repeat after a commit we did not hear about is refused by the fence).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from stepstone.errors import StepstoneError, StorageError

T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Op = Callable[[Conn], Awaitable[Any]]

log = logging.getLogger("stepstone.storage.postgres")


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the connection broke, or PostgreSQL aborted the transaction."""
    return isinstance(exc, psycopg.OperationalError)


class AmbiguousCommit(StorageError):
    """The connection broke during COMMIT: the transaction may or may not have been applied."""


class _OpFailed(StorageError):
    def __init__(self, index: int, cause: psycopg.Error) -> None:
        super().__init__(str(cause))
        self.index = index
        self.cause = cause


class Transactor:
    """Runs functions of a connection in transactions, retrying transient failures with backoff."""

    def __init__(self, pool: AsyncConnectionPool[Conn], *, retry_for: float) -> None:
        self.pool = pool
        self.retry_for = retry_for

    async def run(self, fn: Callable[[Conn], Awaitable[T]], *, idempotent: bool = True) -> T:
        """Run ``fn`` in one transaction and commit; returns its result.

        Args:
            fn: the work; it may raise our errors (they roll back and pass through).
            idempotent: whether running ``fn`` again after a commit whose outcome is unknown is harmless.
                If not, such a failure raises :class:`AmbiguousCommit` instead of retrying.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_for
        delay = 0.02
        while True:
            committing = False
            try:
                async with self.pool.connection() as conn:
                    result = await fn(conn)
                    committing = True
                    await conn.commit()
                    return result
            except StepstoneError:
                raise
            except psycopg.Error as exc:
                if not is_transient(exc):
                    raise StorageError(f"PostgreSQL error: {exc}") from exc
                if committing and not idempotent:
                    raise AmbiguousCommit(
                        f"the connection to PostgreSQL broke while committing; the write may or may not "
                        f"have been applied ({exc})"
                    ) from exc
                if loop.time() + delay > deadline:
                    raise StorageError(f"PostgreSQL unavailable for {self.retry_for:.0f}s, giving up: {exc}") from exc
                log.warning("PostgreSQL transaction failed (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)


class GroupWriter:
    """The task that group-commits a storage's run writes."""

    def __init__(self, transactor: Transactor, *, max_batch: int = 500, ride_along_s: float = 0.02) -> None:
        self._tx = transactor
        self._max_batch = max_batch
        self._ride_along_s = ride_along_s
        self._queue: asyncio.Queue[tuple[int, Op, asyncio.Future[Any] | None] | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        self.writes = 0

    def start(self) -> None:
        """Start the writer task on the running loop."""
        self._task = asyncio.create_task(self._run(), name="stepstone-pg-writer")

    def submit(self, op: Op, *, key: int, wait: bool = True) -> asyncio.Future[Any] | None:
        """Queue a write for instance ``key``; with ``wait`` the returned future resolves after its commit."""
        fut: asyncio.Future[Any] | None = asyncio.get_running_loop().create_future() if wait else None
        self._queue.put_nowait((key, op, fut))
        return fut

    async def run(self, op: Callable[[Conn], Awaitable[T]], *, key: int) -> T:
        """Queue a write for instance ``key`` and wait for its commit; returns the op's result."""
        fut = self.submit(op, key=key)
        assert fut is not None
        result: T = await fut
        return result

    async def stop(self) -> None:
        """Commit what is queued, then stop."""
        if self._task is None:
            return
        self._queue.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    # Writes nobody waits for ride along with the next awaited one, at most ride_along_s.
                    if any(item is None or item[2] is not None for item in batch):
                        break
                    try:
                        batch.append(await asyncio.wait_for(self._queue.get(), self._ride_along_s))
                    except TimeoutError:
                        break
            if any(item is None for item in batch):
                stopping = True
            # Instance rows are locked in pk order (as renewals lock them), so batches never deadlock;
            # the sort is stable, so each instance's writes keep their order.
            items = sorted((item for item in batch if item is not None), key=lambda item: item[0])
            if items:
                await self._commit([(op, fut) for _, op, fut in items])

    async def _commit(self, items: list[tuple[Op, asyncio.Future[Any] | None]]) -> None:
        pending = list(items)
        while pending:
            try:
                outcomes = await self._tx.run(lambda conn: _apply(conn, pending))
            except _OpFailed as failed:
                # One op hit a real error and aborted the transaction: fail it, replay the others.
                fut = pending.pop(failed.index)[1]
                error = StorageError(f"PostgreSQL error: {failed.cause}")
                if fut is not None and not fut.done():
                    fut.set_exception(error)
                elif fut is None:
                    log.error("a queued write failed: %s", error)
                continue
            except StorageError as exc:
                for _, fut in pending:
                    if fut is not None and not fut.done():
                        fut.set_exception(exc)
                return
            self.commits += 1
            self.writes += len(pending)
            for (_, fut), (ok, value) in zip(pending, outcomes, strict=True):
                if fut is None or fut.done():
                    continue
                if ok:
                    fut.set_result(value)
                else:
                    fut.set_exception(value)
            return


async def _apply(conn: Conn, pending: list[tuple[Op, asyncio.Future[Any] | None]]) -> list[tuple[bool, Any]]:
    outcomes: list[tuple[bool, Any]] = []
    for index, (op, _) in enumerate(pending):
        try:
            outcomes.append((True, await op(conn)))
        except StepstoneError as exc:
            # Our own refusals (fencing) are raised before the op writes anything.
            outcomes.append((False, exc))
        except psycopg.Error as exc:
            if is_transient(exc):
                raise
            raise _OpFailed(index, exc) from exc
    return outcomes
