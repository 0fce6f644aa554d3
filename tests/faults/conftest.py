"""Fault-test kit: worker subprocesses on a shared database, and the checks every fault test ends with."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepstone import Engine, codec
from stepstone.testing import wait_for_status
from tests.faults.worker import STEPS, Chain, expected_values

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["sqlite", "postgres"])
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """One database shared by several worker processes: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    value: str = request.getfixturevalue("postgres_url")
    return value


class Workers:
    """Worker subprocesses running ``tests.faults.worker`` on one database."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: set[int] = set()

    def start(
        self,
        step_seconds: float | None = None,
        *,
        concurrency: int = 10,
        lease_seconds: float = 2.0,
        gate: Path | None = None,
        gate_step: str = "s0",
        env: dict[str, str] | None = None,
        stderr: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a worker; ``gate``: its step ``gate_step`` waits until that file exists (see the worker);
        ``env`` adds environment variables, ``stderr`` keeps its log lines in that file."""
        args = [sys.executable, "-m", "tests.faults.worker", self.url, str(self.log), f"--concurrency={concurrency}"]
        args.append(f"--lease-seconds={lease_seconds}")
        if step_seconds is not None:
            args.append(f"--step-seconds={step_seconds}")
        if gate is not None:
            args += [f"--gate={gate}", f"--gate-step={gate_step}"]
        out = open(stderr, "wb") if stderr is not None else contextlib.nullcontext(subprocess.DEVNULL)  # noqa: SIM115
        with out as err:  # the child has its own copy of the file once started
            environ = {**os.environ, **(env or {})}
            proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err, env=environ)
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.killed.add(proc.pid)

    @property
    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.send_signal(signal.SIGKILL)
                proc.wait()


@pytest.fixture
def workers(shared_url: str, tmp_path: Path) -> Iterator[Workers]:
    kit = Workers(shared_url, tmp_path / "executions.log")
    try:
        yield kit
    finally:
        kit.stop_all()


async def create_chain(url: str, count: int) -> None:
    """Create ``count`` chain instances i0..i<count-1> from a client process (no worker of its own)."""
    async with Engine(url, worker=False) as client:
        wf = client.register(Chain, name="chain")
        await wf.create_batch({"instances": [{"id": f"i{n}", "params": {"n": n}} for n in range(count)]})


def read_log(log: Path) -> list[tuple[float, int, str, str]]:
    """Every step execution: (start time, pid, instance id, step name)."""
    if not log.exists():
        return []
    out = []
    for line in log.read_text().splitlines():
        started, pid, inst, name = line.split()
        out.append((float(started), int(pid), inst, name))
    return out


async def check_all_complete(url: str, log: Path, count: int, *, timeout: float = 90.0) -> dict[str, object]:
    """Every instance completes with the right output, built from the one recorded result of each step, and
    no step execution started after that step's result was recorded."""
    ended: dict[tuple[str, str], float] = {}
    outputs: dict[str, object] = {}
    async with Engine(url, worker=False) as client:
        wf = client.register(Chain, name="chain")
        for n in range(count):
            inst = await wf.get(f"i{n}")
            status = await wait_for_status(inst, "complete", timeout=timeout)
            assert status.status == "complete", (n, status)
            output = status.output
            assert isinstance(output, dict) and output["n"] == n
            assert [r[0] for r in output["results"]] == expected_values(n)
            record = await client.storage.get_instance("local", "chain", f"i{n}")
            assert record is not None
            steps, _ = await client.storage.load_history(record.pk)
            dos = sorted((s for s in steps if s.kind == "do"), key=lambda s: s.seq)
            assert [s.name for s in dos] == [f"s{i}" for i in range(STEPS)]
            assert [s.status for s in steps] == ["success"] * len(steps)
            # the output was built from exactly the recorded results: nothing overwrote one afterwards
            assert [codec.decode(s.result or "null") for s in dos] == output["results"]
            for s in dos:
                assert s.ended_at is not None
                ended[(f"i{n}", s.name)] = s.ended_at
            outputs[f"i{n}"] = output
    reruns = [e for e in read_log(log) if e[0] > ended[(e[2], e[3])]]
    assert not reruns, f"completed steps ran again: {reruns[:5]}"
    return outputs


def owner_pid(owner: str | None) -> int | None:
    """The process id in a worker's lease owner id (``host:pid:random``)."""
    if owner is None:
        return None
    pid = owner.split(":")[1]
    return int(pid) if pid.isdigit() else None


async def held_instances(client: Engine, count: int) -> dict[int, set[str]]:
    """Which process holds the lease of which running instance (of i0..i<count-1>), now."""
    held: dict[int, set[str]] = {}
    for n in range(count):
        record = await client.storage.get_instance("local", "chain", f"i{n}")
        pid = owner_pid(record.lease_owner) if record is not None and record.status == "running" else None
        if pid is not None:
            held.setdefault(pid, set()).add(f"i{n}")
    return held


def started(log: Path, step: str) -> dict[str, int]:
    """The instances whose step ``step`` has started, and the process that started it first."""
    out: dict[str, int] = {}
    for _, pid, inst, name in read_log(log):
        if name == step:
            out.setdefault(inst, pid)
    return out


async def wait_until(predicate: object, timeout: float = 30.0) -> None:
    """Poll a zero-argument callable until it returns true."""
    assert callable(predicate)
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"condition not met within {timeout}s")
