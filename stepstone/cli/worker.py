"""``stepstone worker``: a worker process and nothing else (plus the project's cron schedules)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import click

from stepstone.cli.common import config_option, database_option, load_project, log_options, run, start_logging
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
) -> None:
    """Run the project's workflows until SIGINT/SIGTERM; instances in flight carry on at the next start."""
    engine = project.engine(worker=True, database=database, concurrency=concurrency, poll_interval=poll_interval)
    async with engine:
        names = ", ".join(engine.definitions) or "none"
        owner = engine.worker.owner if engine.worker is not None else "?"
        info(f"⎔ {banner} {owner} ready: workflows {names}; database {engine.storage.url}")
        tasks: list[asyncio.Task[None]] = []
        crons = schedules_of(project.config)
        if schedules and crons:
            tasks.append(
                asyncio.create_task(
                    run_schedules(engine, lambda: crons, on_fire=lambda wf, i: info(f'⌛ cron created "{i}" of {wf}'))
                )
            )
        try:
            await until_signalled()
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@click.command()
@config_option
@database_option("sqlite:///file.db or postgresql://... (default: the project's).")
@click.option(
    "--concurrency", type=click.IntRange(min=1), default=None, help="Instances run at once (default: the project's)."
)
@click.option("--schedules/--no-schedules", default=True, show_default=True, help="Fire the cron schedules.")
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.01),
    default=1.0,
    show_default=True,
    help="Seconds between looks for work other processes created.",
)
@log_options
def worker(
    config: Path | None,
    database: str | None,
    concurrency: int | None,
    schedules: bool,
    poll_interval: float,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Run a worker: claim and run the project's instances until stopped (SIGINT/SIGTERM)."""
    project = load_project(config)
    start_logging(log_level, log_format, project.settings)
    install_stdout()
    run(
        run_worker(
            project, database=database, concurrency=concurrency, schedules=schedules, poll_interval=poll_interval
        )
    )
