"""Process hygiene of the CLI, with real processes: ``stepstone dev``'s worker child dies with dev (SIGKILL
included), and the parent watch that backs PR_SET_PDEATHSIG up."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.test_cli_dev import CONFIG, WORKFLOW, wait_for


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped yet counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(p) for p in text]
    return found


def start(args: list[str], cwd: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    environment = {k: v for k, v in os.environ.items() if k not in ("STEPSTONE_DATABASE_URL", "DATABASE_URL")}
    with log.open("w") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "stepstone.cli", *args],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**environment, **env},
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_sigkill_of_dev_takes_its_worker_child_down(tmp_path: Path) -> None:
    (tmp_path / "stepstone.toml").write_text(CONFIG)
    (tmp_path / "app.py").write_text(WORKFLOW)
    log = tmp_path / "dev.log"
    proc = start(["dev", "--no-api", "--watch-interval", "0.1"], tmp_path, log)
    worker = 0
    try:
        wait_for(lambda: "ready:" in log.read_text(), 30, "the worker child to start")
        (worker,) = wait_for(lambda: children(proc.pid), 10, "the worker child")
        assert "worker" in Path(f"/proc/{worker}/cmdline").read_text()
        proc.send_signal(signal.SIGKILL)  # no cleanup runs in dev
        proc.wait()
        wait_for(lambda: not alive(worker), 30, f"the worker child {worker} to exit after dev was killed")
        assert "stopped" in log.read_text().split("ready:")[-1]  # it stopped as on SIGTERM, releasing its leases
    finally:
        stop(proc)
        if worker and alive(worker):  # never leave an orphan behind, even when the test fails
            os.kill(worker, signal.SIGKILL)


def test_the_parent_watch_notices_a_dead_parent_without_pdeathsig(tmp_path: Path) -> None:
    """The fallback for platforms without PR_SET_PDEATHSIG: a grandchild whose parent shell is SIGKILLed sees
    ``os.getppid()`` change and returns from ``parent_gone``."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        textwrap.dedent(
            """
            import asyncio, os, sys
            from stepstone.cli.lifeline import parent_gone
            print(os.getpid(), flush=True)
            asyncio.run(parent_gone(os.getppid(), interval=0.05))
            open(sys.argv[1], "w").write("parent gone")
            """
        )
    )
    marker = tmp_path / "gone.txt"
    out = tmp_path / "pid.txt"
    shell = subprocess.Popen(["sh", "-c", f"{sys.executable} {probe} {marker} > {out}; sleep 60"], cwd=tmp_path)
    try:
        pid = int(wait_for(lambda: out.exists() and out.read_text().strip(), 30, "the probe to start"))
        assert alive(pid)
        shell.kill()
        shell.wait()
        wait_for(marker.exists, 30, "the probe to notice its parent is gone")
        wait_for(lambda: not alive(pid), 30, "the probe to exit")
    finally:
        stop(shell)


def test_a_worker_whose_parent_is_already_gone_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "stepstone.toml").write_text(CONFIG)
    (tmp_path / "app.py").write_text(WORKFLOW)
    log = tmp_path / "worker.log"
    proc = start(["worker", "--parent-pid", "1", "--no-schedules"], tmp_path, log)  # 1 is not our parent
    assert proc.wait(30) != 0
    assert "parent process 1 is gone" in log.read_text()
    assert "ready:" not in log.read_text()


def test_dev_with_its_port_taken_fails_at_once_and_starts_nothing(tmp_path: Path) -> None:
    (tmp_path / "stepstone.toml").write_text(CONFIG)
    (tmp_path / "app.py").write_text(WORKFLOW)
    log = tmp_path / "dev.log"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = start(["dev", "--port", str(port)], tmp_path, log)
        try:
            assert proc.wait(30) == 1
        finally:
            stop(proc)
    text = log.read_text()
    assert f"cannot serve the API: cannot listen on 127.0.0.1:{port}" in text, text
    assert "--local" in text and "--port" in text  # what to do about it
    assert "ready:" not in text  # no worker was started
