"""Which database the CLI uses from the environment, in real subprocesses: ``DATABASE_URL`` as a fallback to
``STEPSTONE_DATABASE_URL``, and a warning when a command falls back to the default SQLite file although another
database variable (``PGHOST``, ``POSTGRES_URL``...) is set."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.test_cli_dev import CONFIG, WORKFLOW, wait_for

ROOT = Path(__file__).resolve().parent.parent
_DATABASE_VAR = re.compile(r"^(PG\w+|STEPSTONE_DATABASE_URL|\w*(DATABASE|DB|POSTGRES|POSTGRESQL|PG)_?(URL|URI|DSN))$")


def environment(**env: str) -> dict[str, str]:
    """This process's environment without any database variable, plus ``env``; the child imports this checkout."""
    clean = {k: v for k, v in os.environ.items() if not _DATABASE_VAR.match(k)}
    return {**clean, "PYTHONPATH": str(ROOT), **env}


def stepstone(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepstone.cli", *args],
        cwd=cwd,
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "stepstone.toml").write_text(CONFIG)
    (tmp_path / "app.py").write_text(WORKFLOW)
    return tmp_path


def test_database_url_is_used_outside_a_project(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'from-env.db'}"
    result = stepstone("db", "migrate", "--json", cwd=tmp_path, DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["url"] == url
    assert (tmp_path / "from-env.db").is_file()
    assert "WARNING" not in result.stderr


def test_database_url_reaches_postgres_from_a_project(project: Path, postgres_url: str) -> None:
    created = stepstone(
        "workflows", "trigger", "edited", '{"nap": 1}', "--json", cwd=project, DATABASE_URL=postgres_url
    )
    assert created.returncode == 0, created.stderr
    instance_id = json.loads(created.stdout)["id"]
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute("SELECT workflow FROM instances WHERE id = %s", (instance_id,)).fetchall()
    assert rows == [("edited",)]  # the instance is in PostgreSQL, not in the project's default SQLite file
    assert not (project / ".stepstone").exists()


def test_stepstone_database_url_wins_over_database_url(tmp_path: Path) -> None:
    ours, theirs = tmp_path / "ours.db", tmp_path / "theirs.db"
    result = stepstone(
        "db",
        "migrate",
        "--json",
        cwd=tmp_path,
        STEPSTONE_DATABASE_URL=f"sqlite:///{ours}",
        DATABASE_URL=f"sqlite:///{theirs}",
    )
    assert result.returncode == 0, result.stderr
    assert ours.is_file() and not theirs.exists()


def test_falling_back_to_sqlite_warns_about_other_database_variables(project: Path) -> None:
    result = stepstone(
        "db", "status", "--json", cwd=project, PGHOST="db.internal", POSTGRES_URL="postgresql://u@db.internal/app"
    )
    default = project / ".stepstone" / "stepstone.db"
    assert json.loads(result.stdout)["url"] == f"sqlite:///{default}"
    assert f"using the default SQLite file sqlite:///{default} although PGHOST, POSTGRES_URL are set" in result.stderr
    assert "DATABASE_URL" in result.stderr  # it says what stepstone reads instead
    # a database named on the command line or in the project file is no fallback: no warning
    chosen = stepstone("db", "status", "--database", f"sqlite:///{project / 'x.db'}", cwd=project, PGHOST="h")
    assert "WARNING" not in chosen.stderr
    (project / "stepstone.toml").write_text(CONFIG + '\n[stepstone]\ndatabase = "sqlite:///y.db"\n')
    in_file = stepstone("db", "status", cwd=project, PGHOST="h")
    assert "WARNING" not in in_file.stderr


def test_a_database_url_stepstone_cannot_open_is_ignored_with_a_warning(project: Path) -> None:
    result = stepstone("db", "status", "--json", cwd=project, DATABASE_URL="mysql://u@db.internal/app")
    assert json.loads(result.stdout)["url"].startswith("sqlite:///")
    assert "although DATABASE_URL is set" in result.stderr


def test_worker_warns_before_it_starts_on_the_default_file(project: Path) -> None:
    log = project / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepstone.cli", "worker"],
            cwd=project,
            env=environment(PGDATABASE="app"),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "ready:" in log.read_text(), 30, "the worker to start")
        text = log.read_text()
        assert "although PGDATABASE is set" in text
        assert text.index("although PGDATABASE") < text.index("ready:")
    finally:
        proc.terminate()
        proc.wait(15)
