"""``stepstone workflows list|describe|trigger|delete``: wrangler's verbs, arguments and output (spec §15)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click

from stepstone.cli.backend import Backend, Doc
from stepstone.cli.common import Target, open_backend, run, target_options
from stepstone.cli.instances import instances
from stepstone.cli.output import echo, emit_json, info, labelled, local_time, status_label, table, warn
from stepstone.cli.watch import carry_on_message, watch
from stepstone.graph import graph_text

FINISHED = ("complete", "errored", "terminated")


@click.group()
def workflows() -> None:
    """Manage workflows and their instances (like `wrangler workflows`)."""


workflows.add_command(instances)


@workflows.command("list")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True, help="Page to show.")
@click.option("--per-page", type=click.IntRange(min=1), default=50, show_default=True, help="Workflows per page.")
@target_options
def list_workflows(page: int, per_page: int, target: Target) -> None:
    """List the workflows of the project's database."""

    async def go() -> None:
        async with open_backend(target) as backend:
            items = sorted(await backend.list_workflows(), key=lambda w: w.get("created_on") or "", reverse=True)
        shown = items[(page - 1) * per_page : page * per_page]
        if target.json:
            emit_json(shown)
            return
        if not shown:
            if page == 1:
                warn("There are no deployed Workflows in this account")
            else:
                warn(f"No Workflows found on page {page}. Please try a smaller page number.")
            return
        info(f"Showing {len(shown)} workflow{'' if len(shown) == 1 else 's'} from page {page}:")
        rows = [
            [
                w.get("name"),
                w.get("script_name"),
                w.get("class_name"),
                local_time(w.get("created_on")),
                local_time(w.get("modified_on")),
            ]
            for w in shown
        ]
        echo(table(["Name", "Script name", "Class name", "Created", "Modified"], rows))

    run(go())


@workflows.command()
@click.argument("name")
@click.option("--graph", "show_graph", is_flag=True, help="Also draw the latest version's diagram (its run()).")
@target_options
def describe(name: str, show_graph: bool, target: Target) -> None:
    """Describe a workflow: its class, script, latest version and instance counts."""

    async def go() -> None:
        async with open_backend(target) as backend:
            wf = await backend.get_workflow(name)
            versions = await backend.list_versions(name)
            latest = versions[0]["id"] if versions else wf.get("version_id")
            graph = await backend.version_graph(name, str(latest)) if show_graph and latest else None
        if target.json:
            emit_json(wf | ({"versions": versions} | ({"graph": graph["graph"]} if graph else {})))
            return
        echo(
            labelled(
                [
                    ("Name", wf.get("name")),
                    ("Id", wf.get("id")),
                    ("Script Name", wf.get("script_name")),
                    ("Class Name", wf.get("class_name")),
                    ("Created On", local_time(wf.get("created_on"))),
                    ("Modified On", local_time(wf.get("modified_on"))),
                ]
            )
        )
        echo("Latest Version:")
        echo(
            labelled(
                [
                    ("Id", latest),
                    ("Created On", local_time(wf.get("created_on"))),
                    ("Modified On", local_time(wf.get("modified_on"))),
                ],
                indent="  ",
            )
        )
        if len(versions) > 1:
            echo("Earlier Versions:")
            echo(labelled([(str(v.get("id")), local_time(v.get("modified_on"))) for v in versions[1:10]], indent="  "))
        schedules = wf.get("schedules") or []
        if schedules:
            echo("Schedules:")
            echo(labelled([(s.get("cron"), f"next {local_time(s.get('next_instance'))}") for s in schedules], "  "))
        counts = {k: v for k, v in (wf.get("instances") or {}).items() if v}
        if counts:
            echo("Instances:")
            echo(labelled([(status_label(k), v) for k, v in counts.items()], indent="  "))
        if graph is not None:
            echo("Graph:")
            echo(textwrap.indent(graph_text(graph.get("graph")), "  "))

    run(go())


@workflows.command()
@click.argument("name")
@target_options
def delete(name: str, target: Target) -> None:
    """Delete a workflow and all its instances."""

    async def go() -> None:
        async with open_backend(target) as backend:
            await backend.delete_workflow(name)
        if target.json:
            emit_json({"status": "ok", "success": True})
            return
        echo(
            f'✅ Workflow "{name}" removed successfully. \n'
            " Note that running instances might take a few minutes to be properly terminated."
        )

    run(go())


def parse_params(text: str | None) -> Any:
    """The ``params`` argument of trigger: JSON text (default ``{}``)."""
    if text is None or text == "":
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f'Error while parsing instance parameters: "{text}" with {exc}') from None


BATCH: int = 100
"""Instances per request of ``trigger --count`` / ``--params-file`` (Cloudflare's ``createBatch`` maximum)."""


def read_params_file(path: Path) -> list[Any]:
    """``--params-file``: one JSON value per line (JSON Lines), the params of one instance; blank lines skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--params-file") from None
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise click.BadParameter(f"{path} line {number} is not JSON: {exc}", param_hint="--params-file") from None
    if not out:
        raise click.BadParameter(f"{path} holds no params (one JSON value per line)", param_hint="--params-file")
    return out


async def trigger_many(backend: Backend, name: str, batches: list[Doc]) -> Doc:
    """Send the batches in turn; the result of all of them, error indexes counted across the whole input."""
    created: list[Doc] = []
    errors: list[Doc] = []
    offset = 0
    for batch in batches:
        result = await backend.create_batch(name, batch)
        created.extend(result.get("created") or [])
        errors.extend({**e, "index": int(e.get("index", 0)) + offset} for e in result.get("errors") or [])
        offset += int(batch["count"]) if "count" in batch else len(batch["instances"])
    return {"created": created, "errors": errors}


def _batches(payload: Any, count: int | None, lines: list[Any] | None) -> list[Doc]:
    if lines is not None:
        return [{"instances": [{"params": p} for p in lines[i : i + BATCH]]} for i in range(0, len(lines), BATCH)]
    assert count is not None
    return [{"count": min(BATCH, count - i), "params": payload} for i in range(0, count, BATCH)]


@workflows.command()
@click.argument("name")
@click.argument("params", required=False)
@click.option("--id", "instance_id", default=None, help="The instance id (default: a random UUIDv4).")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Create this many instances with PARAMS (random ids), 100 per request.",
)
@click.option(
    "--params-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Create one instance per line of this JSON Lines file (each line the params of one), 100 per request.",
)
@click.option(
    "--wait",
    is_flag=True,
    help="Follow the instance's events until it finishes (like `instances watch`); exit 1 if it did not complete.",
)
@click.option("--poll", type=float, default=0.2, hidden=True, help="Ignored: --wait follows the event stream.")
@target_options
@click.pass_context
def trigger(
    ctx: click.Context,
    name: str,
    params: str | None,
    instance_id: str | None,
    count: int | None,
    params_file: Path | None,
    wait: bool,
    poll: float,
    target: Target,
) -> None:
    """Create an instance of a workflow, with PARAMS as JSON (queued for the running dev or worker process).

    With --count N or --params-file FILE it creates many at once (100 per request); it prints how many were
    queued and why any were not, and exits 1 if any were not."""
    if count is not None and params_file is not None:
        raise click.UsageError("--count and --params-file cannot be used together")
    batch = count is not None or params_file is not None
    if batch and (instance_id is not None or wait):
        raise click.UsageError("--id and --wait name one instance: they cannot be used with --count or --params-file")
    if params_file is not None and params is not None:
        raise click.UsageError("PARAMS and --params-file cannot be used together: the file holds the params")
    payload = parse_params(params)
    lines = read_params_file(params_file) if params_file is not None else None

    async def go() -> int:
        async with open_backend(target, need_code=True) as backend:
            if batch:
                result = await trigger_many(backend, name, _batches(payload, count, lines))
                return _report_batch(result, json_output=target.json)
            created = await backend.create_instance(name, instance_id, payload)
            if not wait:
                if target.json:
                    emit_json(created)
                else:
                    echo(f'🚀 Workflow instance "{created["id"]}" has been queued successfully')
                return 0
            if not target.json:
                info(f'🚀 Workflow instance "{created["id"]}" has been queued successfully')
            created_id[0] = str(created["id"])
            doc = await watch(backend, name, created_id[0], quiet=target.json)
        if target.json:
            emit_json(doc)
        return 0 if doc.get("status") == "complete" else 1

    created_id = [instance_id or ""]
    try:
        code = run(go())
    except KeyboardInterrupt:
        info(carry_on_message(name, created_id[0]))
        ctx.exit(130)
    if code:
        ctx.exit(code)


def _report_batch(result: Doc, *, json_output: bool) -> int:
    created, errors = result["created"], result["errors"]
    if json_output:
        emit_json(result)
    else:
        n = len(created)
        echo(f"🚀 {n} workflow instance{'' if n == 1 else 's'} queued successfully")
        for error in errors:
            warn(f"instance {error.get('index')} ({error.get('id')}) was not created: {error.get('message')}")
    return 1 if errors else 0
