"""PostgreSQL restarted in the middle of a run, on a throwaway cluster this test starts itself."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import Workers, check_all_complete, create_chain, read_log, started, wait_until
from tests.faults.worker import STEPS

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Cluster:
    """A private PostgreSQL cluster in a temporary directory (run as ``postgres`` when we are root)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="stepstone-pg-"))
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.dir.chmod(0o700)
        self._run(str(BIN / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres", "--no-sync")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-o", opts, "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(str(BIN / "pg_ctl"), "-D", str(self.dir / "data"), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if not (BIN / "initdb").exists() or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.skip(f"no PostgreSQL 15 server binaries at {BIN} (or no runuser to drop root) for a throwaway cluster")
    c = Cluster()
    try:
        c.init()
        c.start()
    except (subprocess.SubprocessError, OSError) as exc:
        c.remove()
        pytest.skip(f"cannot start a throwaway PostgreSQL cluster: {exc}")
    try:
        yield c
    finally:
        with contextlib.suppress(subprocess.SubprocessError):
            c.stop("immediate")
        c.remove()


async def test_workers_survive_a_postgres_restart(cluster: Cluster, tmp_path: Path) -> None:
    # Two workers of concurrency 10 hold all 20 instances inside step s2, which waits for a gate: the crash
    # lands in the middle of every instance's run by construction. The gate opens just before the crash, so
    # those steps finish and write while the server is down.
    kit = Workers(cluster.url, tmp_path / "executions.log")
    gate = tmp_path / "gate"
    try:
        count = 20
        await create_chain(cluster.url, count)
        for _ in range(2):
            kit.start(step_seconds=0.3, concurrency=10, gate=gate, gate_step="s2")
        await wait_until(lambda: len(started(kit.log, "s2")) == count, timeout=60)
        assert not [e for e in read_log(kit.log) if e[3] not in ("s0", "s1", "s2")]  # nothing passed the gate
        gate.touch()
        cluster.stop("immediate")  # a crash: no clean shutdown, recovery replays the WAL
        await asyncio.sleep(2.0)
        cluster.start()
        await check_all_complete(cluster.url, kit.log, count, timeout=60)
        assert all(p.poll() is None for p in kit.procs)  # workers rode it out, none crashed
        assert len(read_log(kit.log)) >= count * STEPS
    finally:
        kit.stop_all()
