"""``stepstone d1 execute NAME --command SQL | --file FILE``: wrangler's ``d1 execute`` on the local files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from stepstone.bindings import d1_path
from stepstone.bindings.d1 import D1Database
from stepstone.bindings.values import to_py
from stepstone.cli.common import config_option, load_project, run
from stepstone.cli.output import echo, emit_json, info, table
from stepstone.errors import ValidationError
from stepstone.storage.d1_sqlite import split_statements


@click.group()
def d1() -> None:
    """Query the project's D1 databases (like `wrangler d1`)."""


@d1.command("execute")
@click.argument("database")
@click.option("--command", "command", default=None, metavar="SQL", help="The SQL statement(s) to run.")
@click.option(
    "--file", "file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="A file of SQL to run."
)
@click.option("--local", is_flag=True, help="Run on the local database (the only kind stepstone has; the default).")
@click.option("--remote", is_flag=True, hidden=True)
@click.option("-y", "--yes", is_flag=True, hidden=True, help="Accepted for wrangler compatibility.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@config_option
def execute(
    database: str,
    command: str | None,
    file: Path | None,
    local: bool,
    remote: bool,
    yes: bool,
    as_json: bool,
    config: Path | None,
) -> None:
    """Run SQL on the D1 database DATABASE (its database_name or binding): every statement in one transaction."""
    if (command is None) == (file is None):
        raise click.UsageError("give exactly one of --command or --file")
    if remote:
        raise click.UsageError("stepstone runs D1 locally only: drop --remote")
    project = load_project(config)
    entry = next(
        (d for d in project.config.bindings.d1 if database in (d.database_name, d.binding, d.database_id)), None
    )
    if entry is None:
        known = ", ".join(d.database_name for d in project.config.bindings.d1) or "none"
        raise ValidationError(
            f"{project.config.path.name}: no [[d1_databases]] entry named {database!r} (configured: {known})"
        )
    sql = command if command is not None else file.read_text(encoding="utf-8")  # type: ignore[union-attr]
    path = d1_path(project.root, entry.database_name)
    if not as_json:
        info(f"🌀 Executing on local database {entry.database_name} ({entry.database_id or '-'}) from {path.parent}:")
    results = run(_run(str(path), entry.database_name, sql))
    if as_json:
        emit_json(results)
        return
    info(f"🚣 {len(results)} command{'s' if len(results) != 1 else ''} executed successfully.")
    for result in results:
        rows = result["results"]
        if rows:
            headers = list(rows[0])
            echo(table(headers, [[_cell(row.get(h)) for h in headers] for row in rows]))


async def _run(path: str, name: str, sql: str) -> list[dict[str, Any]]:
    db = D1Database(path, name=name)
    try:
        statements = [db.prepare(text) for _, text in split_statements(sql)]
        return [to_py(r) for r in await db.batch(statements)]
    finally:
        db.close()


def _cell(value: object) -> object:
    if isinstance(value, bytes):
        return json.dumps(list(value))  # D1 shows a BLOB as its bytes
    return value
