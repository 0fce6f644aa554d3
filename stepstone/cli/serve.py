"""``stepstone serve``: the REST API, the dashboard, and the project's Worker ``fetch``, for production.

It runs no instances: workers (``stepstone worker``) do that. When the project's ``main`` declares a Worker (a
``Default`` entrypoint), ``serve`` imports it to answer every path the API does not own with its ``fetch``
handler, as ``stepstone dev`` does (``--api-only`` keeps user code out of this process). Any number of ``serve``
processes can stand in front of one database. Tokens come from ``[stepstone] api_tokens`` in the project file or
``STEPSTONE_API_TOKEN``; without any, it serves loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import click

from stepstone.cli.common import (
    chosen_database,
    config_option,
    database_option,
    load_project,
    log_options,
    run,
    start_logging,
)
from stepstone.cli.output import info
from stepstone.cli.worker import until_signalled
from stepstone.config import default_settings, find_config
from stepstone.engine import Engine
from stepstone.project import Project
from stepstone.runtime import declares_worker, load_runtime, worker_app


async def run_serve(
    engine: Engine, *, host: str, port: int, tokens: list[dict[str, object]], project: Project | None = None
) -> None:
    """Serve until SIGINT/SIGTERM (with ``project``: its Worker's ``fetch`` on every other path)."""
    try:
        from stepstone.server import TokenRule, serve
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    rules = [TokenRule(**rule) for rule in tokens]  # type: ignore[arg-type]
    async with engine:
        worker = None
        if project is not None:
            runtime = load_runtime(project, engine)
            if runtime.has_handler("fetch"):
                worker = worker_app(runtime)
                info(f"⎔ the Worker's fetch ({runtime.name}) on every path but the API's; dashboard under "
                     "/cdn-cgi/stepstone/")  # fmt: skip
        ready = asyncio.Event()
        server = asyncio.create_task(
            serve(engine, host=host, port=port, tokens=rules or None, ready=ready, worker=worker)
        )
        stop = asyncio.create_task(until_signalled())
        started = asyncio.create_task(ready.wait())
        await asyncio.wait([server, stop, started], return_when=asyncio.FIRST_COMPLETED)
        if started.done() and not server.done():
            where = f"http://{host}:{port}"
            board = f"{where}/cdn-cgi/stepstone/" if worker is not None else f"{where}/"
            info(f"⎔ stepstone API on {where}/client/v4, dashboard on {board} (database {engine.storage.url})")
            await asyncio.wait([server, stop], return_when=asyncio.FIRST_COMPLETED)
        for task in (stop, started):
            task.cancel()
        if server.done():
            server.result()  # a refusal to start: raised as the command's error
            return
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server


@click.command()
@config_option
@database_option("Serve this database instead of the project's.")
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1; others need API tokens).")
@click.option("--port", default=None, type=click.IntRange(0, 65535), help="Port (default 8787).")
@click.option("--api-only", is_flag=True, help="Do not import the project's code to serve its Worker's fetch.")
@log_options
def serve(
    config: Path | None,
    database: str | None,
    host: str | None,
    port: int | None,
    api_only: bool,
    log_level: str | None,
    log_format: str | None,
) -> None:
    """Serve the REST API (Cloudflare's v4 Workflows API) and the project's Worker fetch; runs no instances."""
    worker_project: Project | None = None
    if config is not None or find_config(Path.cwd()) is not None:
        project = load_project(config)
        settings = project.settings
        engine = project.engine(worker=False, database=chosen_database(settings, database), register=False)
        if not api_only and declares_worker(project.config.main):
            worker_project = project
    else:
        settings = default_settings()
        engine = Engine(chosen_database(settings, database), worker=False, blob_store=settings.blob_store)
    start_logging(log_level, log_format, settings)
    run(
        run_serve(
            engine,
            host=host or settings.host,
            port=settings.port if port is None else port,
            tokens=list(settings.api_tokens),
            project=worker_project,
        )
    )
