"""What every command shares: the options that pick a project, a database or a server, and opening a backend."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from stepstone.cli.backend import Backend, LocalBackend
from stepstone.cli.output import warn
from stepstone.config import (
    LEASE_SECONDS_RANGE,
    ConfigError,
    Settings,
    client_token,
    database_warning,
    env_database,
    find_config,
)
from stepstone.engine import Engine
from stepstone.observe.logs import setup_logging
from stepstone.project import Project, ProjectError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Target:
    """Where a command acts: ``--config``, ``--database``, ``--api``/``--token``/``--account-id``, ``--json``."""

    config: Path | None = None
    database: str | None = None
    api: str | None = None
    token: str | None = None
    account_id: str = "local"
    json: bool = False


config_option = click.option(
    "-c",
    "--config",
    "config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The project file (default: stepstone.toml, wrangler.toml or wrangler.jsonc here or above).",
)
"""``-c/--config``: the project file, shared by every command that reads a project."""


def database_option(help_text: str = "Use this database instead of the project's.") -> Callable[[F], F]:
    """``--database URL``: a database URL that overrides the project's."""
    return click.option("--database", default=None, metavar="URL", help=help_text)


lease_option = click.option(
    "--lease-seconds",
    type=click.FloatRange(*LEASE_SECONDS_RANGE),
    default=None,
    help="How long a claim on an instance lasts without renewal (default: the project's lease_seconds, 30).",
)
"""``--lease-seconds``: the worker's lease, over ``[stepstone] lease_seconds`` (``dev`` and ``worker``)."""


def log_options(fn: F) -> F:
    """``--log-level`` and ``--log-format``; the command receives them as ``log_level`` and ``log_format``."""
    fn = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default=None,
        help="Log lines as text or one JSON object per line (default: the project's log_format, text).",
    )(fn)
    return click.option(
        "--log-level",
        type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
        default=None,
        help="Least severe log level shown (default: STEPSTONE_LOG_LEVEL, the project's log_level, info).",
    )(fn)


def start_logging(level: str | None, fmt: str | None, settings: Settings) -> tuple[str, str]:
    """Install the log handler: options over the environment and project settings over ``info``/``text``;
    returns the level and format chosen (``dev`` passes them to its worker)."""
    chosen = ((level or settings.log_level or "info").lower(), fmt or settings.log_format)
    setup_logging(*chosen)
    return chosen


def target_options(fn: F) -> F:
    """Add the options of :class:`Target` to a command; it receives them as ``target``."""

    @config_option
    @database_option()
    @click.option("--api", default=None, metavar="URL", help="Act through a running stepstone server instead.")
    @click.option("--token", default=None, help="API token for --api (default: STEPSTONE_API_TOKEN).")
    @click.option("--account-id", default="local", show_default=True, help="Account id in --api paths.")
    @click.option("--local", is_flag=True, help="Like wrangler: act through `stepstone dev` on 127.0.0.1:--port.")
    @click.option("--port", type=click.IntRange(1, 65535), default=8787, show_default=True, help="Port for --local.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
    @functools.wraps(fn)
    def wrapper(
        *args: Any,
        config: Path | None,
        database: str | None,
        api: str | None,
        token: str | None,
        account_id: str,
        local: bool,
        port: int,
        as_json: bool,
        **kwargs: Any,
    ) -> Any:
        if local and api is None:
            api = f"http://127.0.0.1:{port}"
        target = Target(config, database, api, token, account_id, as_json)
        return fn(*args, target=target, **kwargs)

    return wrapper  # type: ignore[return-value]


def load_project(config: Path | None) -> Project:
    """The project named by ``--config``, or found from the working directory."""
    if config is not None and not config.is_file():
        raise click.BadParameter(f"{config} does not exist", param_hint="'-c' / '--config'")
    for line in (project := Project.load(config)).config.warnings:
        warn(line)
    return project


def chosen_database(settings: Settings, database: str | None) -> str:
    """``--database``, else the settings' database; warns when that is the default SQLite file although the
    environment names a database under another name (``PGHOST``, ``POSTGRES_URL``...)."""
    if database:
        return database
    hint = database_warning(settings)
    if hint is not None:
        warn(hint)
    return settings.database


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine to the end."""
    return asyncio.run(coro)


def client_engine(target: Target, *, need_code: bool) -> tuple[Engine, dict[str, tuple[str, ...]]]:
    """An engine on the target's database that runs nothing (the project's, or a bare one outside any project),
    and the project's cron schedules by workflow.

    Args:
        need_code: the command creates instances, so the project's classes must be registered; otherwise a
            ``main`` that fails to import is only a warning.
    """
    if target.config is None and find_config(Path.cwd()) is None:
        database = target.database or env_database()
        if database is None:
            raise ConfigError(
                f"no stepstone.toml, wrangler.toml or wrangler.jsonc in {Path.cwd()} or its parents "
                "(create one with: stepstone init, or pass --database URL)"
            )
        return Engine(database, worker=False), {}
    project = load_project(target.config)
    schedules = {wf.name: wf.schedules for wf in project.config.workflows if wf.schedules}
    database = chosen_database(project.settings, target.database)
    try:
        return project.engine(worker=False, database=database), schedules
    except ProjectError as exc:
        if need_code:
            raise
        warn(f"{exc} (continuing with the workflows the database knows)")
        return project.engine(worker=False, database=database, register=False), schedules


@contextlib.asynccontextmanager
async def open_backend(target: Target, *, need_code: bool = False) -> AsyncIterator[Backend]:
    """The backend a command acts on: HTTP with ``--api``, else the database directly."""
    if target.api:
        from stepstone.cli.http import HttpBackend

        token = target.token or client_token()
        http = HttpBackend(target.api, token=token, account_id=target.account_id)
        try:
            yield http
        finally:
            await http.close()
        return
    engine, schedules = client_engine(target, need_code=need_code)
    local = await LocalBackend(engine, schedules=schedules).start()
    try:
        yield local
    finally:
        await local.close()
