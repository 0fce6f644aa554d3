"""``stepstone workflows instances ...``: list, describe, watch, pause, resume, terminate, restart, send-event,
delete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from stepstone.cli.backend import Backend
from stepstone.cli.common import Target, open_backend, run, target_options
from stepstone.cli.describe import render_instance
from stepstone.cli.output import STATUSES, echo, emit_json, info, local_time, status_label, table, warn
from stepstone.cli.watch import carry_on_message
from stepstone.cli.watch import watch as follow_events
from stepstone.errors import InstanceNotFoundError


@click.group()
def instances() -> None:
    """Manage the instances of a workflow (like `wrangler workflows instances`)."""


async def resolve_id(backend: Backend, name: str, instance_id: str) -> str:
    """``latest`` → the newest instance's id (by creation time)."""
    if instance_id != "latest":
        return instance_id
    items, _ = await backend.list_instances(name, status=None, page=1, per_page=1, reverse=False)
    if not items:
        raise InstanceNotFoundError(f'There are no deployed instances in workflow "{name}"')
    return str(items[0]["id"])


def _check_status(status: str | None) -> str | None:
    if status is not None and status not in STATUSES:
        raise click.UsageError(
            f'Looks like you have provided a invalid status "{status}". Valid statuses are: {", ".join(STATUSES)}'
        )
    return status


@instances.command("list")
@click.argument("name")
@click.option("--status", default=None, help=f"Only instances in this status: {', '.join(STATUSES)}.")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True, help="Page to show.")
@click.option(
    "--per-page", type=click.IntRange(min=1, max=1000), default=50, show_default=True, help="Instances per page."
)
@click.option("--reverse", is_flag=True, help="Oldest first.")
@target_options
def list_instances(name: str, status: str | None, page: int, per_page: int, reverse: bool, target: Target) -> None:
    """List the instances of workflow NAME, newest first."""
    _check_status(status)

    async def go() -> None:
        async with open_backend(target) as backend:
            items, total = await backend.list_instances(
                name, status=status, page=page, per_page=per_page, reverse=reverse
            )
        if target.json:
            emit_json(items)
            return
        if not items:
            if page > 1 and total:
                warn(f"No instances found on page {page}. Please try a smaller page number.")
            else:
                warn(
                    f'There are no instances in workflow "{name}". '
                    f'You can trigger it with "stepstone workflows trigger {name}"'
                )
            return
        info(f"Showing {len(items)} instance{'' if len(items) == 1 else 's'} from page {page}:")
        rows = [
            [
                i.get("id"),
                i.get("version_id"),
                local_time(i.get("created_on")),
                local_time(i.get("modified_on")),
                status_label(i.get("status")),
            ]
            for i in items
        ]
        echo(table(["Instance ID", "Version", "Created", "Modified", "Status"], rows))

    run(go())


@instances.command()
@click.argument("name")
@click.argument("instance_id", default="latest", metavar="[ID]")
@click.option("--step-output/--no-step-output", default=True, show_default=True, help="Show step outputs.")
@click.option(
    "--truncate-output-limit",
    type=click.IntRange(min=0),
    default=5000,
    show_default=True,
    help="Cut outputs longer than this many characters (0: never).",
)
@target_options
def describe(name: str, instance_id: str, step_output: bool, truncate_output_limit: int, target: Target) -> None:
    """Describe an instance (default: the latest) and each of its steps."""

    async def go() -> None:
        async with open_backend(target) as backend:
            resolved = await resolve_id(backend, name, instance_id)
            doc = await backend.describe_instance(name, resolved)
        if target.json:
            emit_json(doc)
            return
        if instance_id == "latest":
            info("Describing latest instance:")
        doc.setdefault("id", resolved)
        echo(render_instance(doc, name, step_output=step_output, limit=truncate_output_limit))

    run(go())


@instances.command()
@click.argument("name")
@click.argument("instance_id", default="latest", metavar="[ID]")
@target_options
@click.pass_context
def watch(ctx: click.Context, name: str, instance_id: str, target: Target) -> None:
    """Follow an instance (default: the latest) through its event stream until it finishes: every attempt and
    its error, retries with their delay, sleeps and waits; then its error (with the traceback) and output.

    Exits 0 if it completed, 1 otherwise; Ctrl-C stops watching, not the instance.
    """
    resolved = [instance_id]

    async def go() -> int:
        async with open_backend(target) as backend:
            resolved[0] = await resolve_id(backend, name, instance_id)
            doc = await follow_events(backend, name, resolved[0], quiet=target.json)
        if target.json:
            emit_json(doc)
        return 0 if doc.get("status") == "complete" else 1

    try:
        code = run(go())
    except KeyboardInterrupt:
        info(carry_on_message(name, resolved[0]))
        ctx.exit(130)
    if code:
        ctx.exit(code)


def _change(name: str, instance_id: str, action: str, message: str, target: Target, **extra: Any) -> None:
    async def go() -> None:
        async with open_backend(target) as backend:
            resolved = await resolve_id(backend, name, instance_id)
            await backend.change_status(name, resolved, action, **extra)
            if target.json:
                doc = await backend.describe_instance(name, resolved)
                emit_json({"id": resolved, "action": action, "status": doc.get("status")})
                return
        echo(message.format(id=resolved, name=name))

    run(go())


@instances.command()
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@target_options
def pause(name: str, instance_id: str, target: Target) -> None:
    """Pause an instance: in-flight steps finish, then it parks."""
    _change(name, instance_id, "pause", '⏸️ The instance "{id}" from {name} was paused successfully', target)


@instances.command()
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@target_options
def resume(name: str, instance_id: str, target: Target) -> None:
    """Resume a paused instance."""
    _change(name, instance_id, "resume", '🔄 The instance "{id}" from {name} was resumed successfully', target)


@instances.command()
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.option("--rollback", is_flag=True, help="Run its undo handlers (last in, first out) before it ends terminated.")
@target_options
def terminate(name: str, instance_id: str, rollback: bool, target: Target) -> None:
    """Stop an instance now (with --rollback: after its undo handlers ran)."""
    extra = {"rollback": True} if rollback else {}
    _change(
        name,
        instance_id,
        "terminate",
        '🥷 The instance "{id}" from {name} was terminated successfully',
        target,
        **extra,
    )


@instances.command()
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.option("--from-step-name", default=None, help="Restart from this step, keeping the steps before it.")
@click.option("--from-step-count", type=int, default=None, help="Which occurrence of the step (default 1).")
@click.option(
    "--from-step-type",
    type=click.Choice(["do", "sleep", "waitForEvent"]),
    default=None,
    help="The step's type (default do).",
)
@target_options
def restart(
    name: str,
    instance_id: str,
    from_step_name: str | None,
    from_step_count: int | None,
    from_step_type: str | None,
    target: Target,
) -> None:
    """Run an instance again from the start, or from a step."""
    if from_step_name is None and (from_step_count is not None or from_step_type is not None):
        raise click.UsageError("--from-step-count and --from-step-type need --from-step-name")
    if from_step_count is not None and from_step_count < 1:
        raise click.UsageError(f"--from-step-count must be a positive integer, got {from_step_count}")
    from_step = None
    if from_step_name is not None:
        from_step = {"name": from_step_name, "count": from_step_count or 1, "type": from_step_type or "do"}
    _change(
        name,
        instance_id,
        "restart",
        '🥷 The instance "{id}" from {name} was restarted successfully',
        target,
        from_step=from_step,
    )


@instances.command("send-event")
@click.argument("name")
@click.argument("instance_id", metavar="ID")
@click.option("--type", "event_type", required=True, help="The event type a wait_for_event waits for.")
@click.option("--payload", default=None, help="The event payload as JSON (default {}).")
@target_options
def send_event(name: str, instance_id: str, event_type: str, payload: str | None, target: Target) -> None:
    """Send an event to an instance."""
    try:
        value = {} if payload in (None, "") else json.loads(payload)
    except json.JSONDecodeError as exc:
        raise click.UsageError(f'Error while parsing event payload: "{payload}" with {exc}') from None

    async def go() -> None:
        async with open_backend(target) as backend:
            resolved = await resolve_id(backend, name, instance_id)
            await backend.send_event(name, resolved, event_type, value)
        if target.json:
            emit_json({"id": resolved, "type": event_type, "payload": value})
            return
        shown = f' and payload "{payload}"' if value not in ({}, None) else ""
        echo(f'📤 The event with type "{event_type}"{shown} was sent to the instance "{resolved}" from {name}')

    run(go())


@instances.command()
@click.argument("name")
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option(
    "--filename",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="A JSON file with a list of ids.",
)
@target_options
def delete(name: str, ids: tuple[str, ...], filename: Path | None, target: Target) -> None:
    """Delete instances and all their state (up to 100; `latest` allowed)."""
    wanted = list(ids)
    if filename is not None:
        try:
            loaded = json.loads(filename.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise click.UsageError(f"{filename}: expected a JSON list of instance ids ({exc})") from None
        if not isinstance(loaded, list) or not all(isinstance(i, str) for i in loaded):
            raise click.UsageError(f"{filename}: expected a JSON list of instance ids")
        wanted += loaded
    if not wanted:
        raise click.UsageError("give at least one instance id (or --filename)")
    if len(wanted) > 100:
        raise click.UsageError(f"at most 100 instances can be deleted at once, got {len(wanted)}")

    async def go() -> int:
        async with open_backend(target) as backend:
            resolved = [await resolve_id(backend, name, i) for i in wanted]
            deleted, errors = await backend.delete_instances(name, resolved)
        if target.json:
            emit_json({"deleted": [{"id": i} for i in deleted], "errors": errors})
            return 1 if errors else 0
        if deleted:
            echo(f'🗑️  Deleted workflow instances from "{name}": ' + ", ".join(f'"{i}"' for i in deleted))
        if errors:
            lines = "\n".join(f"  - {e.get('id')}: {e.get('message')}" for e in errors)
            raise click.ClickException(f"Failed to delete {len(errors)} workflow instance(s):\n{lines}")
        return 0

    if run(go()):
        raise SystemExit(1)
