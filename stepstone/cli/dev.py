"""``stepstone dev``: the project's worker in a child process, restarted when the code changes; the cron schedules;
and the REST API on 127.0.0.1:8787 once ``stepstone.server`` exists. When ``main`` declares a Worker (a ``Default``
entrypoint), the child also serves its ``fetch`` on a loopback port and every path the API does not own is
forwarded there, so the Worker answers on the API's port as under ``wrangler dev`` (the dashboard moves to
``/cdn-cgi/stepstone/``); the child runs the ``scheduled`` handler at ``[triggers] crons`` too.

A port already taken ends ``dev`` at once (exit 1): running on without an API would send ``--local`` commands to
whatever else listens there. The worker child dies with ``dev``, even on SIGKILL (:mod:`stepstone.cli.lifeline`).

The child imports the user's code; this process never does, so an edit that breaks the import only stops the
worker until the next edit. Instances carry on across restarts by replay: a stopped worker releases its leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from stepstone.cli.common import (
    chosen_database,
    config_option,
    database_option,
    lease_option,
    load_project,
    log_options,
    run,
    start_logging,
)
from stepstone.cli.output import info, warn
from stepstone.config import ConfigError
from stepstone.engine import Engine
from stepstone.project import Project, run_schedules, schedules_of
from stepstone.runtime import declares_worker

_SKIP_DIRS = {"__pycache__", "node_modules", "venv", "env", "site-packages"}


def _watched(root: Path, extra: list[Path]) -> Iterator[Path]:
    yield from extra
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in _SKIP_DIRS]
        for f in filenames:
            if f.endswith(".py"):
                yield Path(dirpath) / f


def snapshot(root: Path, extra: list[Path]) -> dict[Path, float]:
    """Modification times of the project's Python files and configuration."""
    out: dict[Path, float] = {}
    for path in _watched(root, extra):
        with contextlib.suppress(OSError):
            out[path] = path.stat().st_mtime_ns
    return out


def changed(before: dict[Path, float], after: dict[Path, float]) -> list[Path]:
    """Files added, removed or modified between two snapshots."""
    return sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))


class Child:
    """The worker subprocess (``python -m stepstone.cli worker``)."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "stepstone.cli", "worker", *self.args)

    @property
    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def stop(self, grace: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def _start_api(
    project: Project, engine: Engine, port: int, metrics_also: list[str], fetch_port: int | None = None
) -> asyncio.Task[None] | None:
    """Start serving the REST API and return once it listens (the serving task), or None when this install has no
    server.

    Raises:
        click.ClickException: the port is taken (or the address unusable). ``dev`` must not run on without its
            API: ``--local`` commands would reach whatever else listens there, perhaps another project's dev.
    """
    if importlib.util.find_spec("stepstone.server") is None:
        info("  API: not served (stepstone.server is not part of this install)")
        return None
    try:
        from stepstone.server import TokenRule, WorkerProxy, serve
    except ImportError as exc:
        info(f"  API: not served ({exc})")
        return None
    host = project.settings.host
    tokens = [TokenRule(**rule) for rule in project.settings.api_tokens] or None
    ready = asyncio.Event()
    worker = WorkerProxy(f"http://127.0.0.1:{fetch_port}") if fetch_port is not None else None
    task = asyncio.create_task(
        serve(engine, host=host, port=port, tokens=tokens, ready=ready, metrics_also=metrics_also, worker=worker)
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        raise click.ClickException(
            f"cannot serve the API: {task.exception()}. Something else listens there (another stepstone dev?), "
            "and `--local` commands would reach it instead of this project: stop it, or pick a free port with "
            "--port N (then pass --port N to --local commands too), or run with --no-api"
        )
    if worker is not None:
        info(f"  Worker: http://{host}:{port}/ (every path but the API's)")
        info(f"  dashboard: http://{host}:{port}/cdn-cgi/stepstone/")
    else:
        info(f"  dashboard: http://{host}:{port}/")
    info(f"  API: http://{host}:{port}/client/v4 (and the local explorer API under /cdn-cgi/explorer/api)")
    if metrics_also:
        info(f"  metrics: http://{host}:{port}/metrics")
    return task


async def run_dev(
    project: Project,
    *,
    database: str | None,
    port: int,
    api: bool,
    poll: float,
    logging: tuple[str, str] = ("info", "text"),
    lease_seconds: float | None = None,
    test_scheduled: bool = False,
) -> None:
    """Supervise the worker child, fire the schedules and serve the API until SIGINT/SIGTERM."""
    from stepstone.cli.worker import until_signalled

    config_path = project.config.path
    db = chosen_database(project.settings, database)
    child_args = ["--config", str(config_path), "--database", db, "--no-schedules", "--poll-interval", "0.2"]
    child_args += ["--parent-pid", str(os.getpid())]  # the child dies with us, even on SIGKILL
    child_args += ["--log-level", logging[0], "--log-format", logging[1], "--triggers"]
    fetch_port: int | None = None
    if api and declares_worker(project.config.main) and importlib.util.find_spec("uvicorn") is not None:
        fetch_port = _free_port()  # the child serves the Worker's fetch there; the API forwards to it
        child_args += ["--fetch-port", str(fetch_port), "--debug-fetch"]
        if test_scheduled:
            child_args.append("--test-scheduled")
    if lease_seconds is not None:  # else the child reads the project's lease_seconds itself
        child_args += ["--lease-seconds", str(lease_seconds)]
    metrics_also: list[str] = []
    if importlib.util.find_spec("prometheus_client") is not None:
        # The worker child serves its metrics on a loopback port; the API's /metrics adds them to its own.
        metrics_port = _free_port()
        child_args += ["--metrics-port", str(metrics_port)]
        metrics_also.append(f"http://127.0.0.1:{metrics_port}/metrics")
    info(f"⎔ Starting stepstone dev for {project.config.name} ({config_path})")
    info(f"  database: {db}")
    for wf in project.config.workflows:
        extra = f", schedules {', '.join(wf.schedules)}" if wf.schedules else ""
        names = [f"env.{wf.binding}"] if wf.binding else []
        names += [f"ctx.exports.{wf.class_name}"] if wf.exported else []
        info(f"  {', '.join(names)}: workflow {wf.name} (class {wf.class_name}{extra})")
    for key in project.config.vars:
        info(f"  env.{key}: var")
    for key in project.config.secrets:
        info(f"  env.{key}: secret ({', '.join(project.config.secrets_from)})")
    if project.config.crons:
        info(f"  [triggers] crons: {', '.join(project.config.crons)} (the Worker's scheduled handler)")

    engine = project.engine(worker=False, database=db, register=False)
    tasks: list[asyncio.Task[None]] = []
    child = Child(child_args)
    async with engine:
        if api:
            # before the worker and the schedules start: a taken port ends dev here, with nothing left running
            served = await _start_api(project, engine, port, metrics_also, fetch_port)
            if served is not None:
                tasks.append(served)
        current = {"project": project}
        tasks.append(
            asyncio.create_task(
                run_schedules(
                    engine,
                    lambda: schedules_of(current["project"].config),
                    on_fire=lambda wf, i: info(f'⌛ cron created "{i}" of {wf}'),
                )
            )
        )

        async def supervise() -> None:
            root = project.root
            files = snapshot(root, [config_path])
            await child.start()
            reported = False
            while True:
                await asyncio.sleep(poll)
                now = snapshot(root, [config_path])
                diff = changed(files, now)
                if diff:
                    files = now
                    names = ", ".join(str(p.relative_to(root)) if p.is_relative_to(root) else str(p) for p in diff)
                    info(f"↻ {names} changed: restarting the worker")
                    if config_path in diff:
                        try:
                            current["project"] = load_project(config_path)
                        except ConfigError as exc:
                            warn(f"{exc} (keeping the previous configuration)")
                    await child.stop()
                    await child.start()
                    reported = False
                elif child.exited is not None and not reported:
                    reported = True
                    warn(f"the worker exited with code {child.exited}; fix the code and save to restart it")

        tasks.append(asyncio.create_task(supervise()))
        try:
            done_signal = asyncio.create_task(until_signalled())
            await asyncio.wait([done_signal, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await child.stop()
            info("⎔ stepstone dev stopped")


@click.command()
@config_option
@database_option()
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="API port (default: the project's, 8787).")
@click.option("--no-api", is_flag=True, help="Do not serve the REST API.")
@lease_option
@click.option(
    "--test-scheduled",
    is_flag=True,
    help="GET /__scheduled?cron=... runs the Worker's scheduled handler (as wrangler dev --test-scheduled).",
)
@click.option(
    "--watch-interval",
    type=click.FloatRange(min=0.05),
    default=0.3,
    show_default=True,
    help="Seconds between checks for changed files.",
)
@log_options
def dev(
    config: Path | None,
    database: str | None,
    port: int | None,
    no_api: bool,
    lease_seconds: float | None,
    test_scheduled: bool,
    watch_interval: float,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run the project locally: a worker restarted on code changes, the cron schedules, the REST API."""
    project = load_project(config)
    chosen = start_logging(log_level, log_format, project.settings)
    run(
        run_dev(
            project,
            database=database,
            port=port or project.settings.port,
            api=not no_api,
            poll=watch_interval,
            logging=chosen,
            lease_seconds=lease_seconds,
            test_scheduled=test_scheduled,
        )
    )
