"""Shared fixtures: a fresh SQLite database file, or a fresh PostgreSQL database, per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# The kit's fixtures (engine, project, stepstone_database), also when the installed stepstone's entry points are
# another checkout's: the plugin's entry point has this name, so pytest registers it once either way.
pytest_plugins = ["stepstone.pytest_plugin"]


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A SQLite URL for a new file in this test's temporary directory."""
    return f"sqlite:///{tmp_path / 'stepstone.db'}"


def _postgres_server() -> str:
    return os.environ.get("STEPSTONE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_answers(url: str) -> bool:
    try:
        import psycopg

        psycopg.connect(url, connect_timeout=3).close()
    except Exception:
        return False
    return True


# The plugin's @pytest.mark.stepstone_postgres runs where STEPSTONE_TEST_POSTGRES names a server: name ours when
# it answers (and always under CI=true, where a missing server must fail, not skip).
if "STEPSTONE_TEST_POSTGRES" not in os.environ and (
    os.environ.get("CI", "").lower() == "true" or _postgres_answers(_postgres_server())
):
    os.environ["STEPSTONE_TEST_POSTGRES"] = _postgres_server()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test (dropped afterwards).

    Skips when no server answers at ``STEPSTONE_TEST_POSTGRES`` (default the ``test`` database on
    127.0.0.1:5432); fails instead when ``CI=true``, so CI never silently skips the PostgreSQL suite.
    """
    admin_url = _postgres_server()
    try:
        import psycopg

        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=3)
    except Exception as exc:  # no driver, no server, refused: all mean "no PostgreSQL to test on"
        reason = f"no PostgreSQL server at {admin_url} ({exc}); set STEPSTONE_TEST_POSTGRES"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    name = f"stepstone_t_{uuid.uuid4().hex[:12]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin_url.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say plainly, at the end of the run, when PostgreSQL tests were skipped and why."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if "no PostgreSQL server" in str(getattr(report, "longrepr", ""))
    ]
    if skipped:
        reason = str(skipped[0].longrepr[2]) if isinstance(skipped[0].longrepr, tuple) else str(skipped[0].longrepr)
        terminalreporter.write_sep("=", "PostgreSQL tests SKIPPED", yellow=True, bold=True)
        terminalreporter.write_line(f"{len(skipped)} PostgreSQL test(s) did not run: {reason}")
        terminalreporter.write_line("Start PostgreSQL or set STEPSTONE_TEST_POSTGRES; with CI=true this is a failure.")
