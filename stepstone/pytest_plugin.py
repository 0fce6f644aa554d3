"""pytest fixtures for stepstone workflows; ``pip install 'stepstone[test]'`` registers this plugin (``pytest11``).

- ``stepstone_database``: the URL of a fresh database for the test: a SQLite file in its ``tmp_path``, or, for a
  test marked ``@pytest.mark.stepstone_postgres``, a new PostgreSQL database on the server named by
  ``STEPSTONE_TEST_POSTGRES`` (dropped afterwards; the test is skipped when the variable is unset).
- ``engine``: a started :class:`~stepstone.testing.TestEngine` on that database, on the time-skipping clock:
  register workflows on it.
- ``project``: the ``stepstone.toml`` / ``wrangler.toml`` / ``wrangler.jsonc`` of the test's directory (or the
  nearest parent), loaded as ``stepstone dev`` loads it (its ``main`` imported, every workflow registered and
  bound, ``[vars]`` set) on a TestEngine on that database: ``project.env.MY_WORKFLOW``; ``await
  project.fetch("/path")`` and ``await project.scheduled(cron)`` call the Worker's handlers in process.

The async fixtures need pytest-asyncio (part of ``stepstone[test]``); without it they fail with that advice.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from stepstone.config import ProjectConfig
from stepstone.project import Project
from stepstone.runtime import ScheduledController, WorkerRuntime, load_runtime
from stepstone.testing import TestEngine, TimeSkippingClock
from stepstone.workers import Response

MARKER = "stepstone_postgres"
POSTGRES_ENV = "STEPSTONE_TEST_POSTGRES"

try:
    import pytest_asyncio

    HAVE_PYTEST_ASYNCIO = True
except ImportError:  # pragma: no cover - stepstone installed without the [test] extra
    HAVE_PYTEST_ASYNCIO = False


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker."""
    config.addinivalue_line(
        "markers", f"{MARKER}: run the test's stepstone engine on PostgreSQL (${POSTGRES_ENV}); skipped when unset"
    )


class TestProject:
    """A project loaded for a test: its configuration, its test engine, and ``env`` with every binding."""

    __test__ = False

    def __init__(self, project: Project, engine: TestEngine) -> None:
        self.project = project
        self.engine = engine
        self._worker: WorkerRuntime | None = None

    @property
    def config(self) -> ProjectConfig:
        """The parsed configuration."""
        return self.project.config

    @property
    def root(self) -> Path:
        """The project's directory."""
        return self.project.root

    @property
    def env(self) -> SimpleNamespace:
        """The bindings (``env.MY_WORKFLOW``) and ``[vars]``, as the workflows see them."""
        return self.engine.env

    @property
    def clock(self) -> Any:
        """The engine's clock (a :class:`~stepstone.testing.TimeSkippingClock`)."""
        return self.engine.clock

    def worker(self) -> WorkerRuntime:
        """The project's Worker (its ``Default`` entrypoint) over this ``env``."""
        if self._worker is None:
            self._worker = load_runtime(self.project, self.engine)
        return self._worker

    async def fetch(self, url: str, **options: Any) -> Response:
        """Call the Worker's ``fetch`` with ``Request(url, **options)`` in this process, as Cloudflare's vitest
        ``SELF.fetch`` does; a path is taken relative to ``http://localhost/``. ``ctx.wait_until`` work is awaited
        before this returns."""
        from stepstone.workers import Request

        if url.startswith("/"):
            url = "http://localhost" + url
        worker = self.worker()
        ctx = worker.context()
        response = await worker.fetch(Request(url, **options), ctx)
        await ctx.drain()
        return response

    async def scheduled(self, cron: str = "", *, scheduled_time: int | None = None) -> None:
        """Run the Worker's ``scheduled`` handler once, as a firing of ``cron`` (at ``scheduled_time`` ms, default
        the engine clock's now)."""
        when = int(self.engine.clock.now() * 1000) if scheduled_time is None else scheduled_time
        await self.worker().scheduled(ScheduledController(when, cron))


def _postgres_database() -> Iterator[str]:
    server = os.environ.get(POSTGRES_ENV)
    if not server:
        pytest.skip(f"@pytest.mark.{MARKER}: set {POSTGRES_ENV}=postgresql://user@host:5432/db to run it")
    try:
        import psycopg
    except ImportError:
        pytest.fail(f"@pytest.mark.{MARKER} needs the PostgreSQL driver: pip install 'stepstone[postgres]'")
    name = f"stepstone_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def stepstone_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh database URL: SQLite in ``tmp_path``, PostgreSQL under ``@pytest.mark.stepstone_postgres``."""
    if request.node.get_closest_marker(MARKER) is None:
        yield f"sqlite:///{tmp_path / 'stepstone.db'}"
        return
    yield from _postgres_database()


def _async_fixture(fn: Callable[..., AsyncIterator[Any]]) -> Any:
    if HAVE_PYTEST_ASYNCIO:
        return pytest_asyncio.fixture(fn)

    def missing() -> None:  # pragma: no cover - stepstone installed without the [test] extra
        pytest.fail(f"the {fn.__name__} fixture needs pytest-asyncio: pip install 'stepstone[test]'")

    missing.__name__ = fn.__name__
    missing.__doc__ = fn.__doc__
    return pytest.fixture(missing)


@_async_fixture
async def engine(stepstone_database: str) -> AsyncIterator[TestEngine]:
    """A started TestEngine on a fresh database, on a time-skipping clock; stopped after the test."""
    started = TestEngine(stepstone_database, clock=TimeSkippingClock())
    async with started:
        yield started


@contextlib.asynccontextmanager
async def open_project(path: Path | str, database: str) -> AsyncIterator[TestProject]:
    """The project at ``path`` (its config file, or a directory: its config or the nearest parent's), loaded as
    ``stepstone dev`` loads it, on a started TestEngine on ``database``: the ``project`` fixture's body."""
    where = Path(path)
    loaded = Project.load(where) if where.is_file() else Project.load(cwd=where)
    test_engine = loaded.engine(worker=True, database=database, engine_class=TestEngine)
    assert isinstance(test_engine, TestEngine)
    async with test_engine:
        yield TestProject(loaded, test_engine)


@_async_fixture
async def project(request: pytest.FixtureRequest, stepstone_database: str) -> AsyncIterator[TestProject]:
    """The test directory's project on a TestEngine on a fresh database: ``project.env.MY_WORKFLOW``."""
    async with open_project(Path(request.path).parent, stepstone_database) as loaded:
        yield loaded
