"""``stepstone db status|migrate`` on real SQLite files and a real PostgreSQL database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def stepstone(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepstone.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def check_migrate_then_status(url: str, cwd: Path) -> None:
    before = stepstone("db", "status", "--database", url, "--json", cwd=cwd)
    assert before.returncode == 1, before.stderr  # nothing there yet: needs a migration
    assert json.loads(before.stdout)["found"] == 0
    done = stepstone("db", "migrate", "--database", url, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert "migrated from schema version 0" in done.stderr + done.stdout
    after = stepstone("db", "status", "--database", url, "--json", cwd=cwd)
    assert after.returncode == 0, after.stderr
    doc = json.loads(after.stdout)
    assert doc["found"] == doc["expected"] >= 1
    assert doc["state"] == "current"
    again = stepstone("db", "migrate", "--database", url, cwd=cwd)  # idempotent
    assert again.returncode == 0, again.stderr


def test_db_status_and_migrate_on_sqlite(tmp_path: Path) -> None:
    check_migrate_then_status(f"sqlite:///{tmp_path / 'app.db'}", tmp_path)


@pytest.mark.postgres
def test_db_status_and_migrate_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    check_migrate_then_status(postgres_url, tmp_path)


def test_db_status_refuses_an_unknown_url(tmp_path: Path) -> None:
    result = stepstone("db", "status", "--database", "mysql://x", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "unsupported database URL" in result.stderr


def _unreadable(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "cannot read SQLite database" in result.stderr and reason in result.stderr, result.stderr
    assert "needs migration" not in result.stdout + result.stderr


def test_db_status_says_when_it_cannot_read_the_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database, just bytes " * 100)
    _unreadable(stepstone("db", "status", "--database", f"sqlite:///{garbage}", cwd=tmp_path), "not a database")
    folder = tmp_path / "folder.db"
    folder.mkdir()
    _unreadable(stepstone("db", "status", "--database", f"sqlite:///{folder}", cwd=tmp_path), "is a directory")


def test_db_status_on_a_read_only_mount(tmp_path: Path) -> None:
    """A read-only bind mount stops root too (tests run as root, where chmod does not): a WAL database there
    cannot even be read, and ``db status`` says so instead of "schema version 0, needs migration"."""
    import shutil
    import sqlite3

    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0:
        pytest.skip("needs unshare -rm (user and mount namespaces) for a read-only bind mount")
    folder = tmp_path / "mounted"
    folder.mkdir()
    url = f"sqlite:///{folder / 'app.db'}"
    assert stepstone("db", "migrate", "--database", url, cwd=tmp_path).returncode == 0
    conn = sqlite3.connect(folder / "app.db")  # checkpoint: the last close removes -wal and -shm, as after a stop
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    script = (
        f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder} && "
        f"exec {sys.executable} -m stepstone.cli db status --database {url}"
    )
    result = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    _unreadable(result, "is read-only")
    ok = stepstone("db", "status", "--database", url, cwd=tmp_path)  # the same file, outside the mount: current
    assert ok.returncode == 0, ok.stderr
