"""D1 databases: one real SQLite file each, driven on a thread of its own.

D1 *is* SQLite, so a D1 binding runs the user's SQL on a file (``.stepstone/d1/<name>.sqlite3`` by default).
This module owns the connection and the statements; :mod:`stepstone.bindings.d1` gives them D1's API, result
shapes and error messages. Each statement outside a batch commits on its own (D1 autocommits); a batch runs in
one transaction and rolls back whole when one statement fails. Several processes may open the same file (WAL,
a busy timeout).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from stepstone.errors import StorageError

T = TypeVar("T")
Param = None | int | float | str | bytes


class D1QueryError(StorageError):
    """SQLite refused a statement: ``message`` is SQLite's, ``code`` its primary result code name."""

    def __init__(self, message: str, code: str, *, index: int | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.index = index
        """The statement's position in a batch."""
        self.line = line
        """The line of the failing statement of an ``exec`` script."""


@dataclass(frozen=True, slots=True)
class StatementResult:
    """What one statement did."""

    columns: list[str]
    rows: list[tuple[object, ...]]
    changes: int
    last_row_id: int
    duration_ms: float
    rows_read: int
    rows_written: int
    size_after: int


class D1File:
    """One D1 database file.

    Args:
        path: the SQLite file; its directory is created.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepstone-d1")
        self._lock = threading.Lock()

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA foreign_keys = ON")  # D1 enforces foreign keys
            self._conn = conn
        return self._conn

    async def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            with self._lock:
                try:
                    conn = self._connection()
                except sqlite3.Error as exc:
                    raise StorageError(f"cannot open D1 database file {self.path!r}: {exc}") from exc
                return fn(conn)

        return await asyncio.get_running_loop().run_in_executor(self._pool, run)

    async def run(self, statements: Sequence[tuple[str, Sequence[Param]]], *, batch: bool) -> list[StatementResult]:
        """Run statements; ``batch`` makes them one transaction. Raises :class:`D1QueryError`."""

        def op(conn: sqlite3.Connection) -> list[StatementResult]:
            if batch:
                conn.execute("BEGIN IMMEDIATE")
            out: list[StatementResult] = []
            try:
                for index, (sql, params) in enumerate(statements):
                    try:
                        out.append(_statement(conn, sql, params))
                    except sqlite3.Error as exc:
                        raise _query_error(exc, index=index) from None
                if batch:
                    conn.execute("COMMIT")
            except BaseException:
                if batch and conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return out

        return await self._call(op)

    async def script(self, sql: str) -> tuple[int, float]:
        """Run statements one after the other, no parameters (D1's ``exec``); returns (count, duration in ms)."""

        def op(conn: sqlite3.Connection) -> tuple[int, float]:
            start = time.perf_counter()
            count = 0
            for line, statement in split_statements(sql):
                try:
                    conn.execute(statement)
                except sqlite3.Error as exc:
                    raise _query_error(exc, line=line, statement=statement) from None
                count += 1
            return count, (time.perf_counter() - start) * 1000

        return await self._call(op)

    def close(self) -> None:
        """Close the connection and the thread."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
        self._pool.shutdown(wait=False)


def _statement(conn: sqlite3.Connection, sql: str, params: Sequence[Param]) -> StatementResult:
    start = time.perf_counter()
    before = conn.total_changes
    cur = conn.execute(sql, tuple(params))
    rows = cur.fetchall()
    columns = [d[0] for d in cur.description or ()]
    changes = conn.total_changes - before
    last = conn.execute("SELECT last_insert_rowid()").fetchone()[0]
    pages = conn.execute("PRAGMA page_count").fetchone()[0] * conn.execute("PRAGMA page_size").fetchone()[0]
    return StatementResult(
        columns=columns,
        rows=rows,
        changes=changes,
        last_row_id=int(last),
        duration_ms=(time.perf_counter() - start) * 1000,
        rows_read=len(rows),
        rows_written=changes,
        size_after=int(pages),
    )


def _query_error(
    exc: sqlite3.Error, *, index: int | None = None, line: int | None = None, statement: str | None = None
) -> D1QueryError:
    name = getattr(exc, "sqlite_errorname", None) or "SQLITE_ERROR"
    code = "_".join(name.split("_")[:2])  # D1 names the primary code: SQLITE_CONSTRAINT, not ..._UNIQUE
    message = str(exc)
    if isinstance(exc, sqlite3.ProgrammingError) and "bindings" in message:
        message = "Wrong number of parameter bindings for SQL query."
    elif isinstance(exc, sqlite3.ProgrammingError) and "one statement" in message:
        message = "A prepared SQL statement must contain only one statement."
    if statement is not None:
        message = f"{statement.strip()}: {message}"
    return D1QueryError(message, code, index=index, line=line)


def split_statements(sql: str) -> list[tuple[int, str]]:
    """SQL text cut into complete statements (SQLite's own test of completeness, so a ``;`` inside a string or a
    trigger body does not cut), each with the line it starts on; comment-only pieces are skipped."""
    out: list[tuple[int, str]] = []
    start = pos = 0
    while pos < len(sql):
        semi = sql.find(";", pos)
        end = len(sql) if semi < 0 else semi + 1
        chunk = sql[start:end]
        if semi < 0 or sqlite3.complete_statement(chunk):
            text = chunk.strip()
            if not _blank(text):
                lead = len(chunk) - len(chunk.lstrip())
                out.append((sql.count("\n", 0, start + lead) + 1, text))
            start = end
        pos = end
    return out


def _blank(text: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in text.rstrip(";").splitlines())
