"""Read a database's schema version without changing anything (``stepstone db status``)."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from stepstone.errors import StorageError, ValidationError
from stepstone.storage.base import redact_url


@dataclass(frozen=True, slots=True)
class SchemaStatus:
    """Where a database stands: the schema version found (0: none yet) and the one this code expects."""

    backend: str
    url: str
    found: int
    expected: int

    @property
    def state(self) -> str:
        """``current``, ``needs migration`` (older or empty) or ``newer than this stepstone``."""
        if self.found == self.expected:
            return "current"
        return "needs migration" if self.found < self.expected else "newer than this stepstone"


def _sqlite_version(path: str) -> int:
    """The schema version in a SQLite file (0: no stepstone tables yet); StorageError when it cannot be read."""
    what = f"cannot read SQLite database {path!r}"
    if os.path.isdir(path):
        raise StorageError(f"{what}: it is a directory, not a database file")
    if not os.access(path, os.R_OK):
        raise StorageError(f"{what}: permission denied (this user may not read the file)")
    try:
        conn = sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro", uri=True)
        try:
            tables = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stepstone_meta'")
            if tables.fetchone() is None:
                return 0  # a SQLite database without stepstone's tables yet
            row = conn.execute("SELECT value FROM stepstone_meta WHERE key = 'schema_version'").fetchone()
            return int(row[0]) if row else 0
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise StorageError(f"{what}: {exc}{_sqlite_hint(path)}") from exc


def _sqlite_hint(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.access(folder, os.W_OK):
        return (
            f" (its directory {folder!r} is read-only: SQLite in WAL mode must create {os.path.basename(path)}-shm "
            "beside the file even to read it; stepstone cannot use the database there: mount it read-write or "
            "copy it to a writable directory)"
        )
    if not os.access(path, os.W_OK):
        return " (the file is read-only: stepstone needs to write to its database)"
    return ""


async def schema_status(url: str) -> SchemaStatus:
    """The schema version of the database at ``url``, read-only."""
    if url.startswith("sqlite://"):
        from stepstone.storage.sqlite_schema import SCHEMA_VERSION as SQLITE_VERSION

        path = os.path.expanduser(url[len("sqlite://") :][1:])
        found = _sqlite_version(path) if os.path.lexists(path) else 0
        return SchemaStatus("sqlite", url, found, SQLITE_VERSION)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            import psycopg

            from stepstone.storage.postgres_schema import SCHEMA_VERSION as PG_VERSION
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ValidationError(f"PostgreSQL needs its driver: pip install 'stepstone[postgres]' ({exc})") from exc
        try:
            async with await psycopg.AsyncConnection.connect(url) as pg:
                cur = await pg.execute("SELECT to_regclass('stepstone_meta') IS NOT NULL")
                exists = await cur.fetchone()
                found = 0
                if exists and exists[0]:
                    cur = await pg.execute("SELECT value FROM stepstone_meta WHERE key = 'schema_version'")
                    row = await cur.fetchone()
                    found = int(str(row[0])) if row else 0
        except psycopg.Error as exc:
            raise StorageError(f"cannot read PostgreSQL database {redact_url(url)}: {exc}") from exc
        return SchemaStatus("postgresql", redact_url(url), found, PG_VERSION)
    raise ValidationError(f"unsupported database URL {url!r}: expected sqlite:///file.db or postgresql://...")
