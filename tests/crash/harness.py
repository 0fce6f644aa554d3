"""What the crash tests share: a worker subprocess of a module of this package, its SIGKILL, waiting for a state,
and reading what the worker logged (one line per step body run: ``<time> <pid> <instance id> <step key>``)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def backend_url(request: pytest.FixtureRequest, tmp_path: Path, filename: str) -> str:
    """The database of a test parametrized over ``sqlite`` and ``postgres``."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / filename}"
    return str(request.getfixturevalue("postgres_url"))


def start_worker(module: str, url: str, log: Path, gates: Path | None = None) -> subprocess.Popen[bytes]:
    """``python -m tests.crash.<module> URL LOG [GATES]`` from the checkout's root."""
    args = [sys.executable, "-m", f"tests.crash.{module}", url, str(log)]
    if gates is not None:
        args.append(str(gates))
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


async def until(what: str, check: object) -> None:
    """Wait up to a minute for ``check()`` (a plain or an async callable) to be true."""
    for _ in range(6000):
        result = check() if callable(check) else None
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


def logged(log: Path, instance_id: str, key: str) -> bool:
    """Whether the worker logged running step ``key`` of ``instance_id``."""
    return log.exists() and any(
        line.split()[2:] == [instance_id, key] for line in log.read_text().splitlines() if line.strip()
    )
