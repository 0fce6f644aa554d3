"""``stepstone worker``: a worker process (plus the project's cron schedules, the ``scheduled`` handler of its
``[triggers] crons``, and, with ``--fetch-port``, its Worker's ``fetch`` handler: ``stepstone dev`` runs its
worker child so)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import click

from stepstone.bindings.queues import QueueConsumers
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
from stepstone.cli.output import info, warn
from stepstone.engine import Engine
from stepstone.observe.logs import install_stdout
from stepstone.project import Project, run_schedules, schedules_of
from stepstone.runtime import WorkerRuntime, load_runtime, run_crons, worker_app
from stepstone.storage import binding_store


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
    triggers: bool | None = None,
    fetch: tuple[str, int] | None = None,
    debug: bool = False,
    test_scheduled: bool = False,
) -> None:
    """Run the project's workflows until SIGINT/SIGTERM; instances in flight carry on at the next start.

    Args:
        metrics: serve ``GET /metrics`` on this (host, port).
        parent_pid: stop, as on SIGTERM, when this process (``stepstone dev``) exits, however it exits.
        lease_seconds: overrides the project's ``lease_seconds``.
        triggers: run the Worker's ``scheduled`` handler for ``[triggers] crons`` (default: as ``schedules``).
        fetch: serve the Worker's ``fetch`` handler on this (host, port).
        debug: a failing ``fetch`` answers its traceback (``stepstone dev``).
        test_scheduled: ``GET /__scheduled?cron=...`` on the fetch port runs ``scheduled``.
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
            schedules if triggers is None else triggers,
            fetch,
            (debug, test_scheduled),
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
    triggers: bool,
    fetch: tuple[str, int] | None,
    flags: tuple[bool, bool],
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
        tasks.extend(await _start_worker_handlers(project, engine, triggers=triggers, fetch=fetch, flags=flags))
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


async def _start_worker_handlers(
    project: Project, engine: Engine, *, triggers: bool, fetch: tuple[str, int] | None, flags: tuple[bool, bool]
) -> list[asyncio.Task[None]]:
    """The tasks serving the Worker's handlers: ``fetch`` on its port, ``scheduled`` at its crons."""
    config = project.config
    consumers = config.bindings.consumers
    if fetch is None and not (triggers and config.crons) and not consumers:
        return []
    runtime = load_runtime(project, engine)
    tasks: list[asyncio.Task[None]] = []
    store = binding_store(engine.storage)
    if triggers and config.crons:
        if runtime.has_handler("scheduled"):

            async def claim(key: str, expires_at: float) -> bool:  # one process runs each firing
                return await store.claim_once(key, now=engine.clock.now(), expires_at=expires_at)

            info(f"  scheduled: {runtime.name}.scheduled at {', '.join(config.crons)}")
            tasks.append(
                asyncio.create_task(
                    run_crons(
                        runtime,
                        config.crons,
                        engine.clock,
                        claim=claim,
                        on_fire=lambda c: info(f'⌛ scheduled "{c}" ran'),
                    )
                )
            )
        else:
            warn(f"[triggers] crons are set but {runtime.name} has no scheduled handler: they do nothing")
    if consumers:
        if runtime.has_handler("queue"):
            queues = QueueConsumers(store, consumers, engine.clock, runtime.queue)
            await queues.start()
            info(f"  queue: {runtime.name}.queue consumes {', '.join(c.queue for c in consumers)}")
            tasks.append(asyncio.create_task(_until_cancelled(queues.stop)))
        else:
            warn(f"[[queues.consumers]] are set but {runtime.name} has no queue handler: nothing consumes them")
    if fetch is not None:
        tasks.append(await _serve_fetch(runtime, fetch, debug=flags[0], test_scheduled=flags[1]))
    return tasks


async def _until_cancelled(stop: Callable[[], Awaitable[None]]) -> None:
    """Wait until cancelled, then ``stop()`` (a task owning something started elsewhere)."""
    try:
        await asyncio.Event().wait()
    finally:
        await stop()


async def _serve_fetch(
    runtime: WorkerRuntime, where: tuple[str, int], *, debug: bool, test_scheduled: bool
) -> asyncio.Task[None]:
    try:
        from stepstone.server import serve_app
    except ImportError as exc:
        raise click.ClickException(f"--fetch-port needs stepstone[server] (Starlette, uvicorn): {exc}") from None
    ready = asyncio.Event()
    server = asyncio.create_task(
        serve_app(
            worker_app(runtime, debug=debug, test_scheduled=test_scheduled), host=where[0], port=where[1], ready=ready
        )
    )
    started = asyncio.create_task(ready.wait())
    await asyncio.wait([server, started], return_when=asyncio.FIRST_COMPLETED)
    started.cancel()
    if server.done():
        raise click.ClickException(f"cannot serve the Worker's fetch on {where[0]}:{where[1]}: {server.exception()}")
    handled = ", ".join(runtime.handlers()) or "no handlers"
    info(f"  fetch: {runtime.name} ({handled}) on http://{where[0]}:{where[1]}")
    return server


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
@click.option(
    "--fetch-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve the Worker's fetch handler (Default.fetch in main) on this port (needs stepstone[server]).",
)
@click.option("--fetch-host", default="127.0.0.1", show_default=True, help="Address the --fetch-port server uses.")
@click.option(
    "--triggers/--no-triggers",
    default=None,
    help="Run the Worker's scheduled handler at the [triggers] crons (default: as --schedules).",
)
@click.option("--debug-fetch", is_flag=True, hidden=True, help="A failing fetch answers its traceback (dev).")
@click.option(
    "--test-scheduled", is_flag=True, help="GET /__scheduled?cron=... on the --fetch-port runs the scheduled handler."
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
    fetch_port: int | None,
    fetch_host: str,
    triggers: bool | None,
    debug_fetch: bool,
    test_scheduled: bool,
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
            triggers=triggers,
            fetch=None if fetch_port is None else (fetch_host, fetch_port),
            debug=debug_fetch,
            test_scheduled=test_scheduled,
        )
    )
