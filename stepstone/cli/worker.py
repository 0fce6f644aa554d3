"""``stepstone worker``: a worker process and nothing else (plus the project's cron schedules)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

import click

from stepstone.cli.common import config_option, database_option, load_project, run
from stepstone.cli.output import info
from stepstone.project import Project, run_schedules, schedules_of


def setup_logging() -> None:
    """Log the engine's warnings (a step that keeps failing, a lost lease) on stderr."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


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
def worker(
    config: Path | None, database: str | None, concurrency: int | None, schedules: bool, poll_interval: float
) -> None:
    """Run a worker: claim and run the project's instances until stopped (SIGINT/SIGTERM)."""
    setup_logging()
    project = load_project(config)
    run(
        run_worker(
            project, database=database, concurrency=concurrency, schedules=schedules, poll_interval=poll_interval
        )
    )
