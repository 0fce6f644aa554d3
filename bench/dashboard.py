"""How fast the dashboard's pages load over a big database (issue 11: 100,000 instances).

    .venv/bin/python -m bench.dashboard                          # SQLite and PostgreSQL, 100,000 instances
    .venv/bin/python -m bench.dashboard --backends sqlite --instances 20000 --runs 5

For each backend: a fresh database (a SQLite file under ``bench/.tmp``, or a new PostgreSQL database at
``$BENCH_PG_URL``) is filled through the engine's own API, fast: ``create_batch`` of 100 for the instances, then
the worker's storage calls (``claim`` and ``finish``/``suspend``) and the lifecycle calls (``pause``,
``terminate``) give them mixed statuses. One more instance, of a workflow with 1,000 steps, is run to the end
by a real worker. Then ``stepstone serve`` (a real process, no worker) serves the database and each page is
fetched over real HTTP, ``--runs`` times after one warm-up; the table gives min / median / max in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from bench.common import FreshDB, pg_reachable
from stepstone import Engine, WorkflowEntrypoint
from stepstone.server.dashboard.timeline import STEPS_PER_PAGE

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = "orders"
LONG = "long"
LONG_ID = "thousand-steps"
BATCH = 100
MIX: tuple[tuple[str, float], ...] = (
    ("complete", 0.60),
    ("errored", 0.15),
    ("terminated", 0.05),
    ("paused", 0.05),
    ("waiting", 0.05),
    ("running", 0.001),
)
"""The share of each status; the rest stays ``queued``."""


class Orders(WorkflowEntrypoint):
    """The workflow the 100,000 instances belong to (never run here: the fill sets their statuses)."""

    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("charge", lambda: {"ok": True})


class Long(WorkflowEntrypoint):
    """``steps`` steps in a row, each with a small output."""

    async def run(self, event: Any, step: Any) -> Any:
        for i in range(int(event.payload["steps"])):
            await step.do(f"step {i}", lambda i=i: {"i": i})
        return {"steps": event.payload["steps"]}


async def _claim_all(engine: Engine, n: int, owner: str, lease_seconds: float = 3600.0) -> list[Any]:
    claims: list[Any] = []
    while len(claims) < n:
        got = await engine.storage.claim(
            owner=owner,
            now=engine.clock.now(),
            lease_seconds=lease_seconds,
            limit=min(1000, n - len(claims)),
            workflows=[WORKFLOW],
        )
        if not got.claims:
            break
        claims.extend(got.claims)
    return claims


async def _in_chunks(calls: Sequence[Callable[[], Awaitable[object]]], size: int = 1000) -> None:
    for start in range(0, len(calls), size):
        await asyncio.gather(*(call() for call in calls[start : start + size]))


async def fill(url: str, instances: int, steps: int) -> dict[str, int]:
    """Fill the database at ``url``; returns the instances per status."""
    engine = Engine(url, worker=False, synchronous="OFF" if url.startswith("sqlite") else "FULL")
    engine.register(Orders, name=WORKFLOW, script_name="bench")
    engine.register(Long, name=LONG, script_name="bench")
    async with engine:
        wf = engine.workflow(WORKFLOW)
        for start in range(0, instances, BATCH):
            size = min(BATCH, instances - start)
            await wf.create_batch(
                {"instances": [{"id": f"order-{start + i:06d}", "params": {"n": start + i}} for i in range(size)]}
            )
        storage, now = engine.storage, engine.clock.now
        counts = {status: int(instances * share) for status, share in MIX}
        # Lifecycle calls on queued instances, oldest first (claim takes the earliest due, so leave these out).
        ids = [f"order-{i:06d}" for i in range(instances)]
        paused, ids = ids[: counts["paused"]], ids[counts["paused"] :]
        terminated, ids = ids[: counts["terminated"]], ids[counts["terminated"] :]
        week_ms = 7 * 86_400_000
        await _in_chunks([functools.partial(storage.pause, "local", WORKFLOW, i, now=now()) for i in paused])
        await _in_chunks(
            [
                functools.partial(storage.terminate, "local", WORKFLOW, i, now=now(), retention_ms=week_ms)
                for i in terminated
            ]
        )
        done = counts["complete"] + counts["errored"] + counts["waiting"]
        claims = await _claim_all(engine, done + counts["running"], "bench-fill")
        finishing: list[Callable[[], Awaitable[object]]] = []
        for n, claim in enumerate(claims):
            if n < counts["complete"] + counts["errored"]:
                failed = n >= counts["complete"]
                finishing.append(
                    functools.partial(
                        storage.finish,
                        claim.lease,
                        now=now(),
                        status="errored" if failed else "complete",
                        output=None if failed else '{"ok": true}',
                        error_name="RuntimeError" if failed else None,
                        error_message="card declined" if failed else None,
                        retention_ms=week_ms,
                    )
                )
            elif n < done:
                finishing.append(
                    functools.partial(
                        storage.suspend,
                        claim.lease,
                        now=now(),
                        wake_at=now() + 30 * 86_400,
                        waiting_for="approval",
                        wait_types=["approval"],
                    )
                )
            # the rest stay running under their lease (an hour)
        await _in_chunks(finishing)
        by_status = await storage.count_by_status("local", WORKFLOW)
    # The 1,000-step instance, run to the end by a real worker.
    runner = Engine(url, poll_interval=0.05)
    runner.register(Long, name=LONG, script_name="bench")
    async with runner:
        handle = await runner.workflow(LONG).create(id=LONG_ID, params={"steps": steps})
        deadline = time.monotonic() + 600
        while (await handle.status()).status != "complete":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the {steps}-step instance did not complete in 10 minutes")
            await asyncio.sleep(0.2)
    return by_status


def _vacuum(url: str) -> None:
    """``VACUUM ANALYZE``: what autovacuum does to a live database within a minute of such a fill (without it,
    the planner has no statistics and index-only scans still visit the heap)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _serve(url: str, cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``stepstone serve`` over the database, in a folder with no project file; waits until it answers."""
    port = _free_port()
    log = (cwd / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepstone.cli", "serve", "--database", url, "--port", str(port)],
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)},  # this checkout's stepstone
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stepstone serve exited {proc.returncode}: {(cwd / 'serve.log').read_text()[-2000:]}")
        try:
            httpx.get(base + "/health", timeout=1)
            return proc, base
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("stepstone serve did not answer in 30 s")


def _pages(base: str, client: httpx.Client, steps: int) -> list[tuple[str, str]]:
    """The pages to time: (label, URL). The deep page's cursor is the one the "Older" links make there."""
    ui = f"{base}/accounts/local/workflows"
    first = client.get(f"{base}/client/v4/accounts/local/workflows/{WORKFLOW}/instances", params={"per_page": 1})
    total = first.json()["result_info"]["total_count"]
    page = total // 2 // 50  # the middle: page ~1,000 of 2,000 at 100,000 instances
    deep = client.get(
        f"{base}/client/v4/accounts/local/workflows/{WORKFLOW}/instances",
        params={"per_page": 50, "page": page},
    ).json()["result"]
    created = deep[0]["created_on"] if deep else None
    cursor = ""
    if created:
        from datetime import datetime

        ts = datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp()
        cursor = f"{ts!r}:0"
    last = max(1, -(-steps // STEPS_PER_PAGE))
    since = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 86_400))
    return [
        ("workflows", f"{ui}"),
        ("instances, first page", f"{ui}/{WORKFLOW}"),
        (f"instances, deep page (~{page * 50:,} rows in)", f"{ui}/{WORKFLOW}?cursor={quote(cursor)}"),
        ("instances, status=errored", f"{ui}/{WORKFLOW}?status=errored"),
        ("instances, status=running", f"{ui}/{WORKFLOW}?status=running"),
        ("instances, status + since", f"{ui}/{WORKFLOW}?status=complete&since={quote(since)}"),
        ("instances, id search", f"{ui}/{WORKFLOW}?q=order-054321"),
        ("instances, live poll (rows fragment)", f"{ui}/{WORKFLOW}?fragment=rows"),
        (f"instance, {steps:,} steps", f"{ui}/{LONG}/instances/{LONG_ID}"),
        (f"instance, {steps:,} steps, last page of rows", f"{ui}/{LONG}/instances/{LONG_ID}?steps_page={last}"),
    ]


def measure(base: str, runs: int, steps: int) -> list[dict[str, Any]]:
    """Each page: one warm-up, then ``runs`` timed GETs (a fresh connection is not timed: keep-alive)."""
    out = []
    with httpx.Client(timeout=120) as client:
        for label, url in _pages(base, client, steps):
            answer = client.get(url)
            if answer.status_code != 200:
                raise RuntimeError(f"{label}: GET {url} answered {answer.status_code}: {answer.text[:300]}")
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                answer = client.get(url)
                times.append((time.perf_counter() - start) * 1000)
                answer.raise_for_status()
            out.append(
                {
                    "page": label,
                    "url": url.replace(base, ""),
                    "bytes": len(answer.content),
                    "min_ms": min(times),
                    "median_ms": statistics.median(times),
                    "max_ms": max(times),
                }
            )
    return out


def run_backend(backend: str, instances: int, steps: int, runs: int) -> dict[str, Any]:
    db = FreshDB.create(f"dashboard-{backend}")
    try:
        started = time.monotonic()
        counts = asyncio.run(fill(db.url, instances, steps))
        fill_s = time.monotonic() - started
        if db.pg_name is not None:
            _vacuum(db.url)
        print(f"{backend}: filled {sum(counts.values()):,} instances {counts} in {fill_s:.0f} s", flush=True)
        with tempfile.TemporaryDirectory() as cwd:
            proc, base = _serve(db.url, Path(cwd))
            try:
                pages = measure(base, runs, steps)
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        return {"backend": backend, "instances": counts, "fill_s": fill_s, "pages": pages}
    finally:
        db.drop()


def table(result: dict[str, Any], runs: int) -> str:
    """A Markdown table of one backend's pages."""
    lines = [
        f"{result['backend']}, {sum(result['instances'].values()):,} instances, {runs} runs:",
        "",
        "| page | min ms | median ms | max ms | KB |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in result["pages"]:
        lines.append(
            f"| {p['page']} | {p['min_ms']:.1f} | {p['median_ms']:.1f} | {p['max_ms']:.1f} | {p['bytes'] / 1024:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="sqlite,postgres", help="sqlite, postgres or both (default)")
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=1000, help="steps of the one long instance")
    parser.add_argument("--runs", type=int, default=7, help="timed GETs per page, after one warm-up")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = []
    for backend in args.backends.split(","):
        if backend == "postgres" and (why := pg_reachable()):
            print(f"postgres skipped: {why}")
            continue
        result = run_backend(backend, args.instances, args.steps, args.runs)
        results.append(result)
        print()
        print(table(result, args.runs), flush=True)
        print()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
