"""D1: ``prepare(sql).bind(...).first()/.all()/.run()/.raw()``, ``batch([...])`` and ``exec`` on a real SQLite file.

Results have D1's shape (``{results, success, meta: {duration, changes, last_row_id, changed_db, size_after,
rows_read, rows_written, served_by, timings}}``), read by attribute (``result.results``, as JsProxy allows) or by
key (``result["results"]``, as the Workers SDK's converted results allow); rows are dicts that also answer
``row.column``. Errors carry D1's messages: ``D1_ERROR: no such table: users: SQLITE_ERROR``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from stepstone.bindings.errors import D1Error
from stepstone.bindings.values import JsArray, JsObject
from stepstone.storage.d1_sqlite import D1File, D1QueryError, Param, StatementResult


def _param(value: object) -> Param:
    """D1's binding rules: None, numbers, text, bytes; booleans become 1 or 0; anything else is refused."""
    if value is None or isinstance(value, str | float | bytes):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    kind = "object" if isinstance(value, dict | list | tuple | set) else type(value).__name__
    shown = json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
    raise D1Error(f"D1_TYPE_ERROR: Type '{kind}' not supported for value '{shown}'")


def _error(exc: D1QueryError) -> D1Error:
    return D1Error(f"D1_ERROR: {exc.message}: {exc.code}")


def _meta(r: StatementResult) -> JsObject:
    return JsObject(
        served_by="stepstone-d1",
        served_by_region="local",
        served_by_primary=True,
        timings=JsObject(sql_duration_ms=r.duration_ms),
        duration=r.duration_ms,
        changes=r.changes,
        last_row_id=r.last_row_id,
        changed_db=r.changes > 0,
        size_after=r.size_after,
        rows_read=r.rows_read,
        rows_written=r.rows_written,
    )


def _rows(r: StatementResult) -> JsArray:
    return JsArray(JsObject(zip(r.columns, row, strict=True)) for row in r.rows)


def _result(r: StatementResult) -> JsObject:
    return JsObject(results=_rows(r), success=True, meta=_meta(r))


class D1PreparedStatement:
    """A statement and its bound values; ``bind`` returns a new statement (D1's are immutable)."""

    def __init__(self, db: D1Database, sql: str, params: tuple[Param, ...] = ()) -> None:
        if not isinstance(sql, str):
            raise TypeError("Failed to execute 'prepare' on 'D1Database': parameter 1 is not of type 'string'.")
        self._db = db
        self.sql = sql
        self.params = params

    def __repr__(self) -> str:
        return f"D1PreparedStatement({self.sql!r}, params={list(self.params)!r})"

    def bind(self, *values: object) -> D1PreparedStatement:
        """The statement with ``values`` for its ``?`` (or ``?1``, ``?2``...) placeholders."""
        return D1PreparedStatement(self._db, self.sql, tuple(_param(v) for v in values))

    async def _run(self) -> StatementResult:
        return (await self._db._run([self], batch=False))[0]

    async def first(self, column: str | None = None) -> Any:
        """The first row (a dict), or its ``column``; None when there is no row."""
        r = await self._run()
        if not r.rows:
            return None
        row = JsObject(zip(r.columns, r.rows[0], strict=True))
        if column is None:
            return row
        if column not in row:
            raise D1Error("D1_COLUMN_NOTFOUND: Column not found")
        return row[column]

    async def all(self) -> JsObject:
        """``{results: [rows], success, meta}``."""
        return _result(await self._run())

    async def run(self) -> JsObject:
        """The same result as :meth:`all` (D1 returns the rows from ``run`` too)."""
        return _result(await self._run())

    async def raw(self, options: dict[str, Any] | None = None, **kwargs: Any) -> JsArray:
        """The rows as lists of values; ``columnNames=True`` puts the column names first."""
        opts = {**(options or {}), **kwargs}
        r = await self._run()
        rows = JsArray(JsArray(row) for row in r.rows)
        if opts.get("columnNames") or opts.get("column_names"):
            rows.insert(0, JsArray(r.columns))
        return rows


class D1Database:
    """A D1 database binding (``env.DB``) over one SQLite file.

    Args:
        path: the database file.
        name: the ``database_name`` (for messages).
    """

    def __init__(self, path: str, *, name: str = "") -> None:
        self._file = D1File(path)
        self.path = path
        self.name = name

    def __repr__(self) -> str:
        return f"D1Database({self.name or self.path!r})"

    def prepare(self, query: str) -> D1PreparedStatement:
        """A statement for ``query`` (one SQL statement, ``?`` placeholders)."""
        return D1PreparedStatement(self, query)

    async def _run(self, statements: Sequence[D1PreparedStatement], *, batch: bool) -> list[StatementResult]:
        try:
            return await self._file.run([(s.sql, s.params) for s in statements], batch=batch)
        except D1QueryError as exc:
            raise _error(exc) from None

    async def batch(self, statements: Sequence[D1PreparedStatement]) -> JsArray:
        """Run the statements in one transaction: every result, or (one failing) none of their effects."""
        if not isinstance(statements, list | tuple) or not all(isinstance(s, D1PreparedStatement) for s in statements):
            raise TypeError("D1 batch() expects a list of prepared statements")
        if not statements:
            return JsArray()
        return JsArray(_result(r) for r in await self._run(statements, batch=True))

    async def exec(self, query: str) -> JsObject:
        """Run one or more statements, no parameters; ``{count, duration}``."""
        if not isinstance(query, str):
            raise TypeError("Failed to execute 'exec' on 'D1Database': parameter 1 is not of type 'string'.")
        try:
            count, duration = await self._file.script(query)
        except D1QueryError as exc:
            raise D1Error(f"D1_EXEC_ERROR: Error in line {exc.line}: {exc.message}: {exc.code}") from None
        return JsObject(count=count, duration=duration)

    async def dump(self) -> bytes:
        """The database file's bytes (D1's deprecated ``dump``)."""
        await self.exec("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(self.path, "rb") as f:
            return f.read()

    def close(self) -> None:
        """Close the file (the engine's stop calls it)."""
        self._file.close()


__all__ = ["D1Database", "D1PreparedStatement"]
