"""``stepstone worker``: a worker process and nothing else (plus the project's cron schedules)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
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
from stepstone.cli.lifeline import die_with_parent, parent_gone
from stepstone.cli.output import info
from stepstone.observe.logs import install_stdout
from stepstone.project import Project, run_schedules, schedules_of


async def until_signalled() -> None:
    """Return on SIGINT or SIGTERM."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def run_worker(
    project: Project,
    *,
    database: str | None,
    concurrency: int | None,
    schedules: bool,
    poll_interval: float,
    banner: str = "worker",
    metrics: tuple[str, int] | None = None,
    parent_pid: int | None = None,
    lease_seconds: float | None = None,
) -> None:
    """Run the project's workflows until SIGINT/SIGTERM; instances in flight carry on at the next start.

    Args:
        metrics: serve ``GET /metrics`` on this (host, port).
        parent_pid: stop, as on SIGTERM, when this process (``stepstone dev``) exits, however it exits.
        lease_seconds: overrides the project's ``lease_seconds``.
    """
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # from the start: a SIGTERM while starting still stops cleanly
        loop.add_signal_handler(sig, stopping.set)
    try:
        await _run_worker(
            project,
            database,
            concurrency,
            schedules,
            poll_interval,
            banner,
            metrics,
            parent_pid,
            stopping,
            lease_seconds,
        )
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _run_worker(
    project: Project,
    database: str | None,
    concurrency: int | None,
    schedules: bool,
    poll_interval: float,
    banner: str,
    metrics: tuple[str, int] | None,
    parent_pid: int | None,
    stopping: asyncio.Event,
    lease_seconds: float | None,
) -> None:
    engine = project.engine(
        worker=True,
        database=database,
        concurrency=concurrency,
        poll_interval=poll_interval,
        lease_seconds=lease_seconds or project.settings.lease_seconds,
    )
    tasks: list[asyncio.Task[None]] = []
    if metrics is not None:
        try:
            from stepstone.observe.metrics import serve_metrics
        except ImportError as exc:
            raise click.ClickException(f"--metrics-port needs stepstone[metrics] (prometheus-client): {exc}") from None
        collected = engine.enable_metrics()
    async with engine:
        if metrics is not None:
            ready = asyncio.Event()
            server = asyncio.create_task(serve_metrics(collected, host=metrics[0], port=metrics[1], ready=ready))
            started = asyncio.create_task(ready.wait())
            await asyncio.wait([server, started], return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if server.done():
                raise click.ClickException(f"cannot serve metrics on {metrics[0]}:{metrics[1]}: {server.exception()}")
            tasks.append(server)
        names = ", ".join(engine.definitions) or "none"
        owner = engine.worker.owner if engine.worker is not None else "?"
        info(f"⎔ {banner} {owner} ready: workflows {names}; database {engine.storage.url}")
        crons = schedules_of(project.config)
        if schedules and crons:
            tasks.append(
                asyncio.create_task(
                    run_schedules(engine, lambda: crons, on_fire=lambda wf, i: info(f'⌛ cron created "{i}" of {wf}'))
                )
            )
        try:
            stops: list[asyncio.Task[object]] = [asyncio.create_task(stopping.wait())]
            if parent_pid is not None:
                stops.append(asyncio.create_task(parent_gone(parent_pid)))
            try:
                done, _ = await asyncio.wait(stops, return_when=asyncio.FIRST_COMPLETED)
                if parent_pid is not None and stops[-1] in done:
                    info(f"⎔ the parent process {parent_pid} exited: stopping")
            finally:
                for stop in stops:
                    stop.cancel()
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    info(f"⎔ {banner} {owner} stopped")


@click.command()
@config_option
@database_option("sqlite:///file.db or postgresql://... (default: the project's).")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, help="Instances run at once (default: the project's)."
)
@lease_option
@click.option("--schedules/--no-schedules", default=True, show_default=True, help="Fire the cron schedules.")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Seconds between looks for work other processes created.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve Prometheus metrics on GET /metrics at this port (0 picks one; needs stepstone[metrics]).",
)
@click.option(
    "--metrics-host", default="127.0.0.1", show_default=True, help="Address the --metrics-port server listens on."
)
@click.option("--parent-pid", type=int, default=None, hidden=True, help="Exit when this process exits (dev).")
@log_options
def worker(
    config: Path | None,
    database: str | None,
    concurrency: int | None,
    lease_seconds: float | None,
    schedules: bool,
    poll_interval: float,
    metrics_port: int | None,
    metrics_host: str,
    parent_pid: int | None,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run a worker: claim and run the project's instances until stopped (SIGINT/SIGTERM)."""
    if parent_pid is not None:
        die_with_parent(parent_pid)  # before the user's code is imported: a dead dev leaves no stale worker
    project = load_project(config)
    start_logging(log_level, log_format, project.settings)
    install_stdout()
    run(
        run_worker(
            project,
            database=chosen_database(project.settings, database),
            concurrency=concurrency,
            schedules=schedules,
            poll_interval=poll_interval,
            metrics=None if metrics_port is None else (metrics_host, metrics_port),
            parent_pid=parent_pid,
            lease_seconds=lease_seconds,
        )
    )
