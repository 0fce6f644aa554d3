"""Read a database's schema version without changing anything (``stepstone db status``)."""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass

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


async def schema_status(url: str) -> SchemaStatus:
    """The schema version of the database at ``url``, read-only."""
    if url.startswith("sqlite://"):
        from stepstone.storage.sqlite_schema import SCHEMA_VERSION as SQLITE_VERSION

        path = os.path.expanduser(url[len("sqlite://") :][1:])
        found = 0
        if os.path.exists(path):
            try:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                try:
                    row = conn.execute("SELECT value FROM stepstone_meta WHERE key = 'schema_version'").fetchone()
                    found = int(row[0]) if row else 0
                except sqlite3.OperationalError:
                    found = 0  # no stepstone tables yet
                finally:
                    conn.close()
            except sqlite3.Error as exc:
                raise StorageError(f"cannot read SQLite database {path!r}: {exc}") from exc
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
