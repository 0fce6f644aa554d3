"""``stepstone workflows list|describe|trigger|delete``: wrangler's verbs, arguments and output (spec §15)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click

from stepstone.cli.backend import Backend, Doc
from stepstone.cli.common import Target, open_backend, run, target_options
from stepstone.cli.describe import waiting_for
from stepstone.cli.instances import instances
from stepstone.cli.output import distance, echo, emit_json, info, labelled, local_time, status_label, table, warn

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
@click.option("--wait", is_flag=True, help="Follow the instance until it finishes; exit 1 if it did not complete.")
@click.option("--poll", type=float, default=0.2, show_default=True, help="Seconds between checks with --wait.")
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
            doc = await follow(backend, name, str(created["id"]), poll=poll, quiet=target.json)
        if target.json:
            emit_json(doc)
        return 0 if doc.get("status") == "complete" else 1

    code = run(go())
    if code:
        ctx.exit(code)


def _step_line(step: Doc) -> str | None:
    kind = step.get("type")
    name = step.get("name")
    took = distance(step.get("start"), step.get("end")) if step.get("end") else ""
    if kind == "step":
        if step.get("success") is True:
            return f"  ✅ {name} ({took})"
        if step.get("success") is False:
            attempts = step.get("attempts") or [{}]
            err = step.get("error") or attempts[-1].get("error") or {}
            return f"  ❌ {name}: {err.get('name', 'Error')}: {err.get('message', '')}"
        return None
    if kind == "sleep" and step.get("finished"):
        return f"  💤 {name} ({took})"
    if kind == "waitForEvent" and step.get("finished"):
        return f"  📩 {name}" + (" (timed out)" if step.get("error") else "")
    return None


async def follow(backend: Backend, name: str, instance_id: str, *, poll: float, quiet: bool = False) -> Doc:
    """Print steps as they finish and status changes, until the instance ends; returns the final document."""
    printed: set[str] = set()
    status = ""
    waiting = ""
    started = time.monotonic()
    hinted = False
    while True:
        doc = await backend.describe_instance(name, instance_id)
        if not quiet:
            for step in doc.get("steps") or []:
                line = _step_line(step)
                key = f"{step.get('name')}:{line}"
                if line and key not in printed:
                    printed.add(key)
                    info(line)
            if doc.get("status") != status:
                status = str(doc.get("status"))
                info(f"{status_label(status)}")
            now_waiting = waiting_for(doc) if status == "waiting" else ""
            if now_waiting and now_waiting.split(" until ")[0] != waiting.split(" until ")[0]:
                info(f"  {now_waiting}")
            waiting = now_waiting
            if status == "queued" and not hinted and time.monotonic() - started > 5:
                hinted = True
                info("  still queued: is `stepstone dev` or `stepstone worker` running on this database?")
        if doc.get("status") in FINISHED:
            if not quiet:
                if doc.get("error"):
                    err = doc["error"]
                    info(f"Error: {err.get('name')}: {err.get('message')}")
                echo(json.dumps(doc.get("output"), ensure_ascii=False, default=str))
            return doc
        await asyncio.sleep(poll)
