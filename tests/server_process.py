"""A real stepstone server in a subprocess, for the REST tests: an engine with a worker, a few workflows,
and the REST API on a loopback port, over a SQLite file.

Run as a script: ``python tests/server_process.py DATABASE_URL PORT [TOKENS_JSON [LIMITS_JSON]]`` (LIMITS_JSON:
the fields of :class:`~stepstone.server.ConnectionLimits`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydantic

from stepstone import Engine, NonRetryableError, WorkflowEntrypoint, WorkflowTimeoutError
from tests.blob_workflows import BLOB_WORKFLOWS


class Quick(WorkflowEntrypoint):
    """One step; echoes its params."""

    async def run(self, event: Any, step: Any) -> Any:
        echoed = await step.do("echo", lambda: {"echo": event.payload})
        return echoed


class Waiter(WorkflowEntrypoint):
    """A step with a retry, then waits for an ``approval`` event, then a sensitive step."""

    async def run(self, event: Any, step: Any) -> Any:
        tries = {"n": 0}

        def flaky() -> str:
            tries["n"] += 1
            if tries["n"] == 1:
                raise RuntimeError("first attempt fails")
            return "prepared"

        prepared = await step.do("prepare", {"retries": {"limit": 3, "delay": 10, "backoff": "constant"}}, flaky)
        try:
            approval = await step.wait_for_event("approval", "approval", timeout="1 hour")
            payload = approval.payload
        except WorkflowTimeoutError:
            payload = None
        secret = await step.do("secret", {"sensitive": "output"}, lambda: "s3cret")
        return {"prepared": prepared, "approval": payload, "secret_len": len(secret)}


class Sleeper(WorkflowEntrypoint):
    """Sleeps for an hour between two steps."""

    async def run(self, event: Any, step: Any) -> Any:
        await step.do("before", lambda: 1)
        await step.sleep("nap", "1 hour")
        return await step.do("after", lambda: 2)


class Failing(WorkflowEntrypoint):
    """Fails at once with a NonRetryableError."""

    async def run(self, event: Any, step: Any) -> Any:
        def boom() -> None:
            raise NonRetryableError("no way", "BoomError")

        await step.do("boom", boom)


class Many(WorkflowEntrypoint):
    """``params["steps"]`` trivial steps, run 500 at a time in parallel (so 10,000 of them take seconds)."""

    async def run(self, event: Any, step: Any) -> Any:
        n = int(event.payload["steps"])
        for start in range(0, n, 500):
            await asyncio.gather(*(step.do(f"s{i}", lambda i=i: i) for i in range(start, min(n, start + 500))))
        return {"steps": n}


TRIES: dict[str, int] = {}


class Journey(WorkflowEntrypoint):
    """A step that fails once, an in-process sleep, an event wait, a sensitive step (the event stream tests)."""

    async def run(self, event: Any, step: Any) -> Any:
        def flaky() -> str:
            TRIES[event.instance_id] = TRIES.get(event.instance_id, 0) + 1
            if TRIES[event.instance_id] == 1:
                raise RuntimeError("first attempt fails")
            return "prepared"

        await step.do("flaky", {"retries": {"limit": 2, "delay": 10, "backoff": "constant"}}, flaky)
        await step.sleep("nap", 10)
        approval = await step.wait_for_event("approval", "approval", timeout="1 hour")
        await step.do("secret", {"sensitive": "output"}, lambda: "s3cret")
        return {"approved": approval.payload["ok"]}


class SignupParams(pydantic.BaseModel):
    """The typed params of ``signup`` (tests/test_typed.py)."""

    email: str
    age: int
    plan: str = "free"


class Signup(WorkflowEntrypoint[SignupParams]):
    """Typed params: echoes what ``event.payload`` is."""

    async def run(self, event: Any, step: Any) -> Any:
        payload = event.payload
        return {"type": type(payload).__name__, "email": payload.email, "plan": payload.plan}


class Saga(WorkflowEntrypoint):
    """Two steps with undo handlers (tests/test_rollback_rest.py); then it fails and rolls back (``fail``), or
    waits for a ``go`` event (to be terminated with rollback)."""

    async def run(self, event: Any, step: Any) -> Any:
        try:
            for name in ("reserve", "charge"):
                await _saga_step(step, name, event.payload.get("fail_undo", []))()
            if event.payload.get("fail"):
                await step.do("ship", {"retries": {"limit": 0, "delay": 1}}, _fail)
        except ValueError as exc:
            await step.rollback_all(exc)
            raise
        await step.wait_for_event("go", "go", timeout="1 hour")
        return "shipped"


def _saga_step(step: Any, name: str, fail_undo: list[str]) -> Any:
    @step.with_rollback(name, {"retries": {"limit": 0, "delay": 1}})
    async def forward() -> str:
        return f"{name}d"

    @forward.undo
    async def undo(error: Any, output: Any) -> str:
        if output in fail_undo:
            raise RuntimeError(f"cannot undo {output}")
        return f"undid {output}"

    return forward


def _fail() -> None:
    raise ValueError("no courier")


WORKFLOWS: dict[str, type[WorkflowEntrypoint[Any]]] = {
    "saga": Saga,
    "journey": Journey,
    "quick": Quick,
    "waiter": Waiter,
    "sleeper": Sleeper,
    "failing": Failing,
    "many": Many,
    "signup": Signup,
    **BLOB_WORKFLOWS,
}


async def _main(database: str, port: int, tokens_json: str | None, limits_json: str | None) -> None:
    from stepstone.server import ConnectionLimits, TokenRule, serve

    tokens = None
    limits = ConnectionLimits(**json.loads(limits_json)) if limits_json else None
    if tokens_json and tokens_json != "null":
        rules = json.loads(tokens_json)
        tokens = [TokenRule(r.get("token"), r.get("token_sha256"), tuple(r["accounts"])) for r in rules]
    # STEPSTONE_TEST_ENGINE_LIMITS: {"limits": {...}, "account_limits": {...}} for the engine (test_instance_limits)
    engine_limits = json.loads(os.environ.get("STEPSTONE_TEST_ENGINE_LIMITS") or "{}")
    engine = Engine(
        database,
        poll_interval=0.05,
        limits=engine_limits.get("limits"),
        account_limits=engine_limits.get("account_limits"),
        blob_store=os.environ.get("STEPSTONE_TEST_BLOB_STORE"),  # the blob tests' S3 bucket (test_blobs_http)
    )
    for name, cls in WORKFLOWS.items():
        engine.register(cls, name=name, script_name="tests")
    async with engine:
        await serve(engine, host="127.0.0.1", port=port, tokens=tokens, limits=limits)


PIDS: dict[str, int] = {}
"""The pid of each running server process, by base URL."""


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_server(
    tmp: Path,
    *,
    tokens: list[dict[str, Any]] | None = None,
    database: str | None = None,
    limits: dict[str, Any] | None = None,
) -> Iterator[str]:
    """Start the server process; yields its base URL (``http://127.0.0.1:PORT``); stops it after.

    Its pid is ``PIDS[base]`` meanwhile, and what it logs goes to ``tmp / f"server-{port}.log"``.
    """
    database = database or f"sqlite:///{tmp / 'rest.db'}"
    port = free_port()
    args = [sys.executable, str(Path(__file__)), database, str(port)]
    if tokens is not None or limits is not None:
        args.append(json.dumps(tokens))
    if limits is not None:
        args.append(json.dumps(limits))
    log = (tmp / f"server-{port}.log").open("w")
    # the code under test, not whatever checkout the environment's editable install points to
    root = str(Path(__file__).resolve().parent.parent)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    PIDS[base] = proc.pid
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {(tmp / f'server-{port}.log').read_text()}")
            try:
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in 20 s")
            time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        PIDS.pop(base, None)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO)
    extra = [*sys.argv[3:5], None, None]
    asyncio.run(_main(sys.argv[1], int(sys.argv[2]), extra[0], extra[1]))
