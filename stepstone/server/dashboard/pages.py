"""The pages: workflows, the instances of one workflow, one instance. Each reads through the client API (the
``Workflow`` binding and ``WorkflowInstance`` handles the CLI and the REST API use) and renders a template; a
``?fragment=`` query renders only the part that live updates replace."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from stepstone.cron import CronError, parse_cron
from stepstone.errors import InstanceNotFoundError, ValidationError
from stepstone.graph import graph_text
from stepstone.instance import WorkflowInstance
from stepstone.models import DEFAULT_ACCOUNT, FINISHED, STATUSES, InstanceRecord, WorkflowRecord
from stepstone.server.dashboard.live import change_stream
from stepstone.server.dashboard.timeline import build_timeline, parse_iso, show_duration, show_time
from stepstone.server.dashboard.web import View, dashboard_page, error_page, q, root_of, sessions_of
from stepstone.server.envelope import api_error_for, bad_request, log_failure
from stepstone.server.state import state_of

log = logging.getLogger("stepstone.dashboard")

PER_PAGE: Final = 50
RECENT_S: Final = 3600.0
FINISHED_STATUSES: Final = tuple(sorted(FINISHED))


def _config(record: WorkflowRecord) -> dict[str, Any]:
    try:
        config = json.loads(record.config or "{}")
    except ValueError:
        return {}
    return config if isinstance(config, dict) else {}


def _schedules(config: dict[str, Any], now: float) -> list[dict[str, Any]]:
    out = []
    for expression in config.get("schedules") or []:
        try:
            nxt = parse_cron(str(expression)).next_after(datetime.fromtimestamp(now, UTC))
        except CronError as exc:
            out.append({"cron": expression, "next": None, "error": str(exc)})
            continue
        out.append({"cron": expression, "next": nxt.timestamp() if nxt else None, "error": None})
    return out


def _retention(config: dict[str, Any], view: View, name: str) -> dict[str, str]:
    limits = view.scope.account.workflow(name).limits
    given = config.get("default_retention") if isinstance(config.get("default_retention"), dict) else {}
    assert isinstance(given, dict)
    success = given.get("success_retention", limits.success_retention_ms)
    error = given.get("error_retention", limits.error_retention_ms)
    return {
        "success": show_duration(float(success) / 1000) if isinstance(success, int | float) else str(success),
        "error": show_duration(float(error) / 1000) if isinstance(error, int | float) else str(error),
    }


async def _workflow_summary(view: View, record: WorkflowRecord, now: float) -> dict[str, Any]:
    wf = view.scope.account.workflow(record.name)
    counts = await view.scope.account.count_by_status(record.name)
    recent = {
        status: (await wf.list_instances(status=status, limit=1, created_after=now - RECENT_S)).total
        for status in ("complete", "errored")
    }
    config = _config(record)
    concurrency = config.get("concurrency") if isinstance(config.get("concurrency"), dict) else {}
    assert isinstance(concurrency, dict)
    return {
        "record": record,
        "counts": {s: counts.get(s, 0) for s in STATUSES},
        "total": sum(counts.values()),
        "recent": recent,
        "schedules": _schedules(config, now),
        "concurrency": concurrency.get("limit"),
        "retention": _retention(config, view, record.name),
    }


@dashboard_page
async def workflows_page(view: View) -> Response:
    """``GET /accounts/{account}/workflows``: every workflow with its counts, schedules and limits."""
    now = view.state.engine.clock.now()
    records = await view.scope.account.list_workflows()
    summaries = [await _workflow_summary(view, r, now) for r in records]
    template = "_workflows.html" if view.request.query_params.get("fragment") == "list" else "workflows.html"
    return view.render(template, workflows=summaries, statuses=STATUSES, now=now, title="Workflows")


def _utc(text: str | None, field: str) -> float | None:
    """A ``datetime-local`` value (``2026-11-25T09:24``), read as UTC."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise bad_request(f"{field} {text[:40]!r} is not a date and time like 2026-11-25T09:24 (UTC)") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def _cursor(text: str | None) -> tuple[float, int] | None:
    """A page cursor ``<created_on>:<skip>``: the page starts at that creation time, past ``skip`` rows created
    at exactly that time (keyset paging on the ``(workflow, created_on)`` index: deep pages stay fast)."""
    if not text:
        return None
    at, _, skip = text.partition(":")
    try:
        cursor = float(at), int(skip or 0)
    except ValueError:
        raise bad_request(f"cursor {text[:40]!r} is not one this page made: follow the 'Older' link") from None
    if cursor[1] < 0:
        raise bad_request(f"cursor {text[:40]!r} is not one this page made: follow the 'Older' link")
    return cursor


def _next_cursor(items: list[InstanceRecord], cursor: tuple[float, int] | None) -> str:
    last = items[-1].created_on
    same = sum(1 for r in items if r.created_on == last)
    if cursor is not None and cursor[0] == last:
        same += cursor[1]
    return f"{last!r}:{same}"


def instance_filters(view: View) -> dict[str, Any]:
    """The instances page's filters from its query: ``status``, ``since``/``until`` (UTC) and ``q`` (an id)."""
    params = view.request.query_params
    status = params.get("status") or None
    if status is not None and status not in STATUSES:
        raise bad_request(f"status {status[:40]!r} must be one of {', '.join(STATUSES)}")
    return {
        "status": status,
        "since": params.get("since", ""),
        "until": params.get("until", ""),
        "search": params.get("q", "").strip(),
        "after": _utc(params.get("since"), "since"),
        "before": _utc(params.get("until"), "until"),
    }


def filter_query(filters: dict[str, Any], **extra: str) -> str:
    """The query string of the instances page for these filters."""
    pairs = {"status": filters.get("status") or "", "since": filters.get("since", ""), "until": filters["until"]}
    pairs.update(extra)
    return "&".join(f"{k}={q(v)}" for k, v in pairs.items() if v)


async def _instance_rows(view: View, name: str, filters: dict[str, Any]) -> dict[str, Any]:
    wf = await view.scope.workflow(name)
    cursor = _cursor(view.request.query_params.get("cursor"))
    if filters["search"]:
        try:
            record: InstanceRecord | None = await WorkflowInstance(wf, filters["search"]).record()
        except (InstanceNotFoundError, ValidationError):
            record = None
        return {"records": [record] if record else [], "total": 1 if record else 0, "next": None, "cursor": None}
    before = filters["before"]
    if cursor is not None:
        before = cursor[0] if before is None else min(before, cursor[0])
    page = await wf.list_instances(
        status=filters["status"],
        limit=PER_PAGE,
        offset=cursor[1] if cursor else 0,
        newest_first=True,
        created_after=filters["after"],
        created_before=before,
    )
    consumed = (cursor[1] if cursor else 0) + len(page.items)
    more = bool(page.items) and consumed < page.total
    return {
        "records": page.items,
        "total": page.total,
        "next": _next_cursor(page.items, cursor) if more else None,
        "cursor": view.request.query_params.get("cursor"),
    }


@dashboard_page
async def instances_page(view: View) -> Response:
    """``GET /accounts/{account}/workflows/{name}``: the status strip, filters, one page of instances."""
    name = view.request.path_params["workflow_name"]
    record = await view.scope.workflow_record(name)
    filters = instance_filters(view)
    rows = await _instance_rows(view, record.name, filters)
    counts = await view.scope.account.count_by_status(record.name)
    live = rows["cursor"] is None and not filters["search"]
    fragment = view.request.query_params.get("fragment") == "rows"
    version = None if fragment else await view.scope.account.get_version(record.name, record.version_id)
    return view.render(
        "_instances.html" if fragment else "instances.html",
        workflow=record,
        version=version,
        diagram=graph_text(json.loads(version.graph)) if version is not None and version.graph else None,
        filters=filters,
        rows=rows,
        counts={s: counts.get(s, 0) for s in STATUSES},
        total=sum(counts.values()),
        statuses=STATUSES,
        query=filter_query(filters),
        live=live,
        now=view.state.engine.clock.now(),
        title=f"{record.name}: instances",
    )


def _traceback(entry: dict[str, Any]) -> str | None:
    """A traceback carried by an error or attempt document, when the engine recorded one."""
    error = entry.get("error")
    for source in (error if isinstance(error, dict) else {}, entry):
        for key in ("traceback", "stack"):
            value = source.get(key)
            if isinstance(value, str) and value:
                return value
    return None


def _waiting_reason(doc: dict[str, Any], rows: list[Any]) -> str | None:
    """Why the instance is not running now, in one sentence."""
    status = doc.get("status")
    waiting = doc.get("waiting_for")
    if isinstance(waiting, dict):
        kind, name, until = waiting.get("kind"), waiting.get("name"), parse_iso(waiting.get("until"))
        at = show_time(until) if until else None
        if kind == "sleep":
            return f"sleeping in step {name!r} until {at}"
        if kind == "waitForEvent":
            types = ", ".join(repr(t) for t in waiting.get("types") or []) or "an event"
            return f"waiting for event {types} in step {name!r}" + (f", timing out at {at}" if at else "")
        if kind == "retry":
            return f"step {name!r} failed; retry at {at}"
        return f"waiting ({kind})" + (f" until {at}" if at else "")
    if status == "queued":
        return "queued: no worker has claimed it yet (is a worker running that registers this workflow?)"
    if status == "paused":
        return "paused: resume it to carry on"
    if status == "waitingForPause":
        return "pausing: in-flight steps finish, then it parks"
    return None


def _state_token(doc: dict[str, Any]) -> str:
    """Changes whenever anything the live part shows changes (so unchanged polls swap nothing)."""
    steps = doc.get("steps") or []
    last = steps[-1] if steps else {}
    text = json.dumps([doc.get("status"), len(steps), last, doc.get("end")], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dashboard_page
async def instance_page(view: View) -> Response:
    """``GET /accounts/{account}/workflows/{name}/instances/{id}``: status, timeline, data, actions."""
    params = view.request.path_params
    handle, record = await view.scope.instance(params["workflow_name"], params["instance_id"])
    if view.request.query_params.get("fragment") == "stream":  # the live channel (server-sent events)
        return change_stream(handle, finished=record.status in FINISHED)
    doc = await handle.describe()
    now = view.state.engine.clock.now()
    try:
        page = int(view.request.query_params.get("steps_page", "1"))
    except ValueError:
        raise bad_request("steps_page must be a page number") from None
    timeline = build_timeline(doc, now=now, page=page)
    token = _state_token(doc)
    fragment = view.request.query_params.get("fragment")
    if fragment == "live" and view.request.query_params.get("seen") == token:
        return Response(status_code=204)  # nothing changed: htmx keeps the page as it is
    return view.render(
        "_instance.html" if fragment == "live" else "instance.html",
        workflow=record.workflow,
        record=record,
        doc=doc,
        timeline=timeline,
        traceback=_traceback,
        reason=_waiting_reason(doc, timeline.rows),
        finished=record.status in FINISHED,
        token=token,
        now=now,
        instance_url=f"{view.base}/{q(record.workflow)}/instances/{q(record.id)}",
        title=f"{record.id} ({record.workflow})",
    )


@dashboard_page
async def home_page(view: View) -> Response:
    """``GET /accounts/{account}``: to the account's workflows."""
    return RedirectResponse(view.base, status_code=303)


async def root_page(request: Request) -> Response:
    """``GET /``: the workflows of the only account this browser may see, or the list to choose from."""
    sessions = sessions_of(request)
    try:
        accounts = sessions.accounts(request)
    except Exception as exc:
        error = api_error_for(exc)
        if error.status == 401 and not sessions.open:
            return RedirectResponse(root_of(request) + "/login", status_code=303)
        log_failure(log, request, exc, error)
        return error_page(request, error.status, error.message)
    named = sorted(a for a in accounts if a != "*")
    if "*" in accounts:  # every account that has a workflow, and the default one
        known = {w.account for w in await state_of(request).engine.list_workflows(every_account=True)}
        named = sorted({*named, DEFAULT_ACCOUNT, *known})
    if len(named) == 1:
        return RedirectResponse(f"{root_of(request)}/accounts/{q(named[0])}/workflows", status_code=303)
    view = View(request, state_of(request), sessions, "", accounts)
    return view.render("accounts.html", accounts=named, title="Accounts")


async def to_mount_root(request: Request) -> Response:
    """``GET /cdn-cgi/stepstone`` (a mount point without its slash): to the dashboard's root page."""
    return RedirectResponse(request.url.path.rstrip("/") + "/", status_code=307)
