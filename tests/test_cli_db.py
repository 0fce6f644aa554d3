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
