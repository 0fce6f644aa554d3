"""Storage backends behind one protocol; :func:`open_storage` picks one by URL and imports its driver lazily."""

from __future__ import annotations

import os

from stepstone.errors import ValidationError
from stepstone.storage.base import ClaimResult, InstancePage, Storage
from stepstone.storage.bindings_base import BindingStore

DEFAULT_URL = "sqlite:///.stepstone/stepstone.db"

__all__ = [
    "DEFAULT_URL",
    "BindingStore",
    "ClaimResult",
    "InstancePage",
    "Storage",
    "binding_store",
    "open_storage",
    "storage_for_url",
]


def storage_for_url(url: str | None = None, *, synchronous: str = "FULL", blob_store: str | None = None) -> Storage:
    """Build (not open) the backend for ``url``: ``sqlite:///path``, ``sqlite:///:memory:`` is refused,
    ``postgresql://...`` needs the ``postgres`` extra. ``blob_store`` (``s3://KEY:SECRET@bucket/prefix?endpoint=``)
    keeps streamed step outputs in an S3-compatible bucket instead of beside the database."""
    storage = _backend(url, synchronous)
    if blob_store:
        from stepstone.storage.blobs_s3 import S3BlobStore
        from stepstone.storage.s3_client import S3Location

        storage.blobs = S3BlobStore(storage, S3Location.from_url(blob_store))  # type: ignore[misc]
    return storage


def _backend(url: str | None, synchronous: str) -> Storage:
    url = url or DEFAULT_URL
    if url.startswith("sqlite://"):
        path = url[len("sqlite://") :]
        if path.startswith("/"):
            path = path[1:]
        if not path or path == ":memory:":
            raise ValidationError(f"database URL {url!r}: give a file path, e.g. sqlite:///app.db")
        from stepstone.storage.sqlite import SQLiteStorage

        return SQLiteStorage(os.path.expanduser(path), synchronous=synchronous)
    if url.startswith(("postgresql://", "postgres://")):
        try:
            from stepstone.storage.postgres import PostgresStorage  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ValidationError(
                f"database URL {url!r} needs the PostgreSQL driver: pip install 'stepstone[postgres]' ({exc})"
            ) from exc
        storage: Storage = PostgresStorage(url)
        return storage
    raise ValidationError(
        f"unsupported database URL {url!r}: expected sqlite:///path/to/file.db or postgresql://user@host/db"
    )


async def open_storage(url: str | None = None, *, synchronous: str = "FULL") -> Storage:
    """Build and open the backend for ``url``."""
    storage = storage_for_url(url, synchronous=synchronous)
    await storage.open()
    return storage


def binding_store(storage: Storage) -> BindingStore:
    """The KV and Queues tables in ``storage``'s database (the same file or server, tables of their own)."""
    from stepstone.storage.sqlite import SQLiteStorage

    if isinstance(storage, SQLiteStorage):
        from stepstone.storage.bindings_sqlite import SQLiteBindingStore

        return SQLiteBindingStore(storage)
    if type(storage).__name__ == "PostgresStorage":  # no isinstance: the driver is imported only when in use
        from stepstone.storage.bindings_postgres import PostgresBindingStore
        from stepstone.storage.postgres import PostgresStorage  # type: ignore[import-not-found,unused-ignore]

        if isinstance(storage, PostgresStorage):
            return PostgresBindingStore(storage)
    raise ValidationError(
        f"the KV and Queues bindings need a sqlite:/// or postgresql:// database, not {type(storage).__name__}"
    )
