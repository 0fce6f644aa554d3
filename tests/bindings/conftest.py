"""Fixtures for the binding tests: a storage on SQLite or PostgreSQL, and a clock the tests move."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from stepstone.storage import binding_store, storage_for_url
from stepstone.storage.base import Storage
from stepstone.storage.bindings_base import BindingStore
from stepstone.testing import FakeClock

Opener = Callable[[], Awaitable[Storage]]


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bindings.db'}"
    value: str = request.getfixturevalue("postgres_url")
    return value


@pytest.fixture
async def opener(url: str) -> AsyncIterator[Opener]:
    """Opens storages on one database (two stand for two processes)."""
    opened: list[Storage] = []

    async def open_one() -> Storage:
        storage = storage_for_url(url)
        await storage.open()
        opened.append(storage)
        return storage

    yield open_one
    for storage in opened:
        await storage.close()


@pytest.fixture
async def store(opener: Opener) -> BindingStore:
    return binding_store(await opener())


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)
