"""A write that fails because the disk is full is retried while the lease holds, then the lease is released.

The disk really fills: the database (the SQLite file, or PostgreSQL's tables in a tablespace) lives on a tmpfs
of a few MB that a ballast file fills up; SQLite answers ``SQLITE_FULL`` ("database or disk is full"),
PostgreSQL "could not extend file ...: No space left on device". Promptness is measured against the lease: the
instance must complete well before its lease would have run out, which is when it completed before.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stepstone import Engine, WorkflowEntrypoint
from stepstone.errors import StorageUnavailableError
from stepstone.testing import wait_for_status
from tests.faults.conftest import wait_until

pytestmark = pytest.mark.slow

LEASE = 20.0
BIG = 300_000
"""The step result written while the disk is full: larger than anything written before, so the write must grow
the database (SQLite's WAL, PostgreSQL's TOAST table) and cannot fit in space the files already have."""
FULL = re.compile(r"database or disk is full|No space left on device|could not extend file")

RAN: Counter[str] = Counter()
GATE: asyncio.Event | None = None


class Filler(WorkflowEntrypoint):
    """Three steps; ``big`` waits for the test's gate, then returns BIG characters of random hex."""

    async def run(self, event: Any, step: Any) -> Any:
        def before() -> int:
            RAN["before"] += 1
            return 1

        async def big() -> str:
            RAN["big"] += 1
            assert GATE is not None
            await GATE.wait()
            return secrets.token_hex(BIG // 2)

        def after() -> int:
            RAN["after"] += 1
            return 3

        a = await step.do("before", before)
        # An attempt whose result could not be stored counts as failed on replay: retry it at once.
        b = await step.do("big", {"retries": {"limit": 3, "delay": 0}}, big)
        c = await step.do("after", after)
        return {"before": a, "big": len(b), "after": c}


class SmallDisk:
    """A tmpfs of a few MB (world-readable, so PostgreSQL's server can use a directory in it)."""

    def __init__(self, megabytes: int) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="stepstone-fs-"))
        self.path.chmod(0o755)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(self.path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            self.path.rmdir()
            raise OSError(done.stderr.strip() or f"mount exited with {done.returncode}")
        self.ballast = self.path / "ballast"

    def fill(self) -> None:
        """Write the ballast until the filesystem has no byte left."""
        chunk = b"\0" * 65536
        with open(self.ballast, "ab", buffering=0) as f:
            while True:
                try:
                    f.write(chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        return
                    chunk = chunk[: len(chunk) // 2]

    def free(self) -> None:
        self.ballast.unlink()

    def remove(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False, capture_output=True)
        shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture
def small_disk() -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        disk = SmallDisk(16)
    except OSError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and a tmpfs cannot be mounted: {exc}")
        pytest.skip(f"a tmpfs cannot be mounted here: {exc}")
    try:
        yield disk
    finally:
        disk.remove()


@pytest.fixture(params=["sqlite", "postgres"])
def full_url(request: pytest.FixtureRequest, small_disk: SmallDisk) -> Iterator[str]:
    """A database whose data lives on the small disk: a SQLite file, or PostgreSQL tables in a tablespace."""
    if request.param == "sqlite":
        # The writer preallocates the WAL at open (a new database's first steps cost what later ones do): that
        # room would take the big write the full disk must refuse. Without it the WAL has to grow, as a long-lived
        # database's does once its WAL is full of pages that have not been checkpointed.
        from stepstone.storage.sqlite import SQLiteStorage

        monkeypatch = request.getfixturevalue("monkeypatch")
        monkeypatch.setattr(SQLiteStorage, "wal_preallocation", False)
        yield f"sqlite:///{small_disk.path / 'app.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    if not url.startswith(("postgresql://postgres@127.0.0.1", "postgresql://postgres@localhost")):
        pytest.skip("the tablespace must be on this machine: the PostgreSQL server must be local")
    import psycopg

    space = f"stepstone_full_{uuid.uuid4().hex[:8]}"
    directory = small_disk.path / "pg"
    directory.mkdir()
    shutil.chown(directory, "postgres", "postgres")
    asyncio.run(_migrate(url))  # create the schema, then move its tables and indexes onto the small disk
    admin_url = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f"CREATE TABLESPACE {space} LOCATION '{directory}'")
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"ALTER TABLE ALL IN TABLESPACE pg_default SET TABLESPACE {space}")
            conn.execute(f"ALTER INDEX ALL IN TABLESPACE pg_default SET TABLESPACE {space}")
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')
            admin.execute(f"DROP TABLESPACE IF EXISTS {space}")


async def _migrate(url: str) -> None:
    async with Engine(url, worker=False):
        pass


class Seen(logging.Handler):
    """Keeps the messages of stepstone's warnings and errors."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def count(self, pattern: re.Pattern[str] | str) -> int:
        return sum(1 for m in list(self.messages) if re.search(pattern, m))


@pytest.fixture
def seen() -> Iterator[Seen]:
    handler = Seen()
    logger = logging.getLogger("stepstone")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture(autouse=True)
def _fresh_steps() -> Iterator[None]:
    global GATE
    RAN.clear()
    GATE = asyncio.Event()
    yield
    GATE = None


async def test_a_write_on_a_full_disk_is_retried_and_completes_once_space_is_back(
    full_url: str, small_disk: SmallDisk, seen: Seen
) -> None:
    assert GATE is not None
    async with Engine(full_url, lease_seconds=LEASE, poll_interval=0.2) as engine:
        wf = engine.register(Filler, name="filler")
        inst = await wf.create(id="full-1")
        await wait_until(lambda: RAN["big"] == 1)  # "before" is recorded; "big" runs and waits for the gate
        small_disk.fill()
        GATE.set()  # "big" returns; writing its result needs space the disk no longer has
        await wait_until(lambda: seen.count(FULL) >= 1)
        assert (await inst.status()).status == "running"
        small_disk.free()
        freed = time.monotonic()
        status = await wait_for_status(inst, "complete", timeout=3 * LEASE)
        took = time.monotonic() - freed
    assert status.output == {"before": 1, "big": BIG, "after": 3}
    assert dict(RAN) == {"before": 1, "big": 1, "after": 1}  # the result was kept and written, not re-run
    # Held until its lease ran out, the instance would have completed LEASE seconds after the failure at best.
    print(f"completed {took:.2f}s after space came back")
    assert took < LEASE / 4, f"completed {took:.1f}s after space came back (lease {LEASE:.0f}s)"


async def test_a_run_whose_writes_fail_past_its_lease_releases_it_at_once(shared_url: str, seen: Seen) -> None:
    """The database takes no write (the step's, the lease renewals, the release) for longer than the lease can be
    confirmed: the run gives up and its lease is released, so the instance runs again the moment writes work,
    not when the lease would have expired. The step whose result was never stored runs again; the others not."""
    assert GATE is not None
    lease = 12.0  # an attempt starts only while the lease is confirmed for 25% of it: 3 s before it expires
    async with Engine(shared_url, lease_seconds=lease, poll_interval=0.2) as engine:
        storage: Any = engine.storage
        renew, release, put_step = storage.renew, storage.release, storage.put_step
        failing = {"on": False}

        def refuse() -> None:
            if failing["on"]:
                raise StorageUnavailableError("SQLite commit failed: database or disk is full (the test's)")

        async def renew_refused(**kwargs: Any) -> Any:
            refuse()
            return await renew(**kwargs)

        async def release_refused(lease_: Any) -> Any:
            refuse()
            return await release(lease_)

        def put_step_refused(lease_: Any, step: Any, **kwargs: Any) -> Any:
            if failing["on"] and step.name == "big" and step.status == "success":

                async def refused() -> None:
                    refuse()

                return refused()
            return put_step(lease_, step, **kwargs)

        storage.renew, storage.release, storage.put_step = renew_refused, release_refused, put_step_refused
        wf = engine.register(Filler, name="filler")
        inst = await wf.create(id="full-2")
        await wait_until(lambda: RAN["big"] == 1)
        failing["on"] = True
        GATE.set()
        await wait_until(lambda: seen.count("giving the instance up") >= 1, timeout=3 * lease)
        record = await engine.storage.get_instance("local", "filler", "full-2")
        assert record is not None and record.lease_expires_at is not None
        expires = record.lease_expires_at  # when the lease would have run out, had it only been left to expire
        failing["on"] = False
        status = await wait_for_status(inst, "complete", timeout=3 * lease)
        steps, _ = await engine.storage.load_history(record.pk)
    assert status.output == {"before": 1, "big": BIG, "after": 3}
    assert dict(RAN) == {"before": 1, "big": 2, "after": 1}
    (big,) = [s for s in steps if s.name == "big"]
    assert big.attempts[-1].start < expires, "the instance waited for its lease to expire instead of being released"
