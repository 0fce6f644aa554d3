"""Preallocating a SQLite database's write-ahead log, so a new database's first commits cost what later ones do.

In WAL mode every commit appends its pages to the ``-wal`` file and, with ``synchronous=FULL``, syncs it. While
the file grows, each sync also has to make the new size and blocks durable (a filesystem journal commit on
ext4), which made the first few hundred steps of a brand-new database 2-3 x slower than later ones. Once the WAL
has reached ``wal_autocheckpoint`` pages, SQLite checkpoints and starts writing it again from the start, over
blocks that exist, so a warm database never pays that again. SQLite deletes the WAL when the last connection
closes, so every process start used to begin cold.

:func:`preallocate_wal` grows the WAL to that size once, when the writer connects, using SQLite itself: a
transaction writes a scratch table with a page cache too small to hold it, so SQLite spills the pages to the
WAL, then rolls back. Frames of a rolled-back transaction are never part of the database (recovery reads frames
only up to the last commit frame; the next commit overwrites them), but the file keeps its size. One ``fsync``
then makes that size durable, so it is paid at open, not by the first steps. Python's ``sqlite3`` does not expose
``SQLITE_FCNTL_SIZE_HINT`` or ``SQLITE_FCNTL_PERSIST_WAL``, which would do the same from C.
"""

from __future__ import annotations

import os
import sqlite3

_SYNCING = {"FULL", "EXTRA", "2", "3"}
_SCRATCH = "stepstone_wal_preallocation"
_CACHE_PAGES = 8  # the page cache while the scratch table is written: the rest spills to the WAL


def preallocate_wal(conn: sqlite3.Connection, path: str, synchronous: str) -> int:
    """Grow ``path``'s WAL to ``wal_autocheckpoint`` pages if it is smaller; returns the bytes it grew by.

    Only when the connection is in WAL mode with a syncing ``synchronous`` (``FULL``/``EXTRA``): without a
    sync per commit a growing file costs nothing extra. ``conn`` must be in autocommit (no open transaction).
    """
    if synchronous.upper() not in _SYNCING:
        return 0
    if str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        return 0
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    pages = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
    if pages <= 0:
        return 0
    wal = f"{path}-wal"
    target = 32 + pages * (page_size + 24)  # the WAL header, then one (24-byte header + page) frame per page
    before = _size(wal)
    if before >= target:
        return 0
    cache = int(conn.execute("PRAGMA cache_size").fetchone()[0])
    conn.execute(f"PRAGMA cache_size = {_CACHE_PAGES}")
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(f"CREATE TABLE {_SCRATCH} (b BLOB)")
            conn.execute(f"INSERT INTO {_SCRATCH} (b) VALUES (zeroblob(?))", ((pages + 4 * _CACHE_PAGES) * page_size,))
        finally:
            conn.execute("ROLLBACK")
    finally:
        conn.execute(f"PRAGMA cache_size = {cache}")
    fd = os.open(wal, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return _size(wal) - before


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
