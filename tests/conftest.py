"""Shared fixtures: a fresh SQLite database file per test."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    """A SQLite URL for a new file in this test's temporary directory."""
    return f"sqlite:///{tmp_path / 'stepstone.db'}"
