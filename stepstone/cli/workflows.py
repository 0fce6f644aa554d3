"""``stepstone workflows list|describe|trigger|delete``: wrangler's verbs, arguments and output (spec §15)."""

from __future__ import annotations

import json
from typing import Any

import click

from stepstone.cli.common import Target, open_backend, run, target_options
from stepstone.cli.instances import instances
from stepstone.cli.output import echo, emit_json, info, labelled, local_time, status_label, table, warn
from stepstone.cli.watch import carry_on_message, watch

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
@target_options
def describe(name: str, target: Target) -> None:
    """Describe a workflow: its class, script, version and instance counts."""

    async def go() -> None:
        async with open_backend(target) as backend:
            wf = await backend.get_workflow(name)
        if target.json:
            emit_json(wf)
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
                    ("Id", wf.get("version_id")),
                    ("Created On", local_time(wf.get("created_on"))),
                    ("Modified On", local_time(wf.get("modified_on"))),
                ],
                indent="  ",
            )
        )
        schedules = wf.get("schedules") or []
        if schedules:
            echo("Schedules:")
            echo(labelled([(s.get("cron"), f"next {local_time(s.get('next_instance'))}") for s in schedules], "  "))
        counts = {k: v for k, v in (wf.get("instances") or {}).items() if v}
        if counts:
            echo("Instances:")
            echo(labelled([(status_label(k), v) for k, v in counts.items()], indent="  "))

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


@workflows.command()
@click.argument("name")
@click.argument("params", required=False)
@click.option("--id", "instance_id", default=None, help="The instance id (default: a random UUIDv4).")
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
    wait: bool,
    poll: float,
    target: Target,
) -> None:
    """Create an instance of a workflow, with PARAMS as JSON (queued for the running dev or worker process)."""
    payload = parse_params(params)

    async def go() -> int:
        async with open_backend(target, need_code=True) as backend:
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
