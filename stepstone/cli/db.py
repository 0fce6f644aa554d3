"""``stepstone db status|migrate``: the database's schema version, and bringing it up to date."""

from __future__ import annotations

import json
from pathlib import Path

import click

from stepstone.cli.common import chosen_database, config_option, database_option, load_project, run
from stepstone.cli.output import info
from stepstone.config import default_settings, find_config
from stepstone.storage import storage_for_url
from stepstone.storage.schema_status import SchemaStatus, schema_status

_config_option = config_option
_database_option = database_option("sqlite:///file.db or postgresql://... (default: the project's).")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _url(config: Path | None, database: str | None) -> str:
    if database:
        return database
    if config is not None or find_config(Path.cwd()) is not None:
        settings = load_project(config).settings
    else:  # outside any project: the environment, else the default file here
        settings = default_settings()
    return chosen_database(settings, None)


def _print(status: SchemaStatus, as_json: bool, verb: str = "") -> None:
    if as_json:
        doc = {"backend": status.backend, "url": status.url, "found": status.found, "expected": status.expected}
        click.echo(json.dumps({**doc, "state": status.state}))
        return
    info(f"{verb}{status.backend} database {status.url}")
    click.echo(f"Schema version: {status.found} (this stepstone: {status.expected}) - {status.state}")


@click.group()
def db() -> None:
    """Inspect and migrate the database."""


@db.command()
@_config_option
@_database_option
@_json_option
def status(config: Path | None, database: str | None, as_json: bool) -> None:
    """Show the schema version of the database, changing nothing. Exit 1 if it needs a migration or cannot be read."""
    current = run(schema_status(_url(config, database)))
    _print(current, as_json)
    if current.state != "current":
        raise SystemExit(1)


@db.command()
@_config_option
@_database_option
@_json_option
def migrate(config: Path | None, database: str | None, as_json: bool) -> None:
    """Create the tables or apply pending migrations (safe to run from many processes at once)."""
    url = _url(config, database)
    before = run(schema_status(url))

    async def apply() -> None:
        storage = storage_for_url(url)
        await storage.open()
        await storage.close()

    run(apply())
    after = run(schema_status(url))
    if not as_json and before.found != after.found:
        info(f"migrated from schema version {before.found} to {after.found}")
    _print(after, as_json)
