"""The forms: trigger, bulk actions, an instance's lifecycle actions and events, login and logout.

Every form is a plain HTML ``POST`` (htmx's ``hx-boost`` turns them into in-page requests when scripts run),
CSRF-checked, answered with a 303 back to the page with a notice or the error. The work is done through the
client API: ``Workflow.create`` / ``delete_instances`` and the ``WorkflowInstance`` actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Final
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from stepstone.binding import Workflow
from stepstone.errors import InstanceNotFoundError, InvalidStateError, StepstoneError
from stepstone.instance import WorkflowInstance
from stepstone.server.body import read_body
from stepstone.server.dashboard.pages import filter_query, instance_filters
from stepstone.server.dashboard.session import COOKIE
from stepstone.server.dashboard.web import (
    FORM_CAP,
    TEMPLATES,
    View,
    back,
    dashboard_page,
    error_page,
    q,
    root_of,
    sessions_of,
)
from stepstone.server.envelope import ApiError, api_error_for, bad_request, log_failure
from stepstone.server.state import state_of

log = logging.getLogger("stepstone.dashboard")

BULK: Final = ("pause", "resume", "terminate", "delete")
INSTANCE_ACTIONS: Final = ("pause", "resume", "terminate", "restart", "restart_from", "event", "delete")
_jobs: set[asyncio.Task[None]] = set()


def _one(form: dict[str, list[str]], key: str, default: str = "") -> str:
    values = form.get(key)
    return values[0] if values else default


def _json(text: str, field: str, *, empty: Any) -> Any:
    if not text.strip():
        return empty
    try:
        return json.loads(text)
    except ValueError as exc:
        raise bad_request(f"{field} is not valid JSON: {exc}") from None


async def _apply(wf: Workflow, action: str, ids: list[str]) -> tuple[int, list[str]]:
    """Apply a bulk action; returns how many it changed and the refusals (finished, gone)."""
    if action == "delete":
        found = await wf.delete_instances(ids)
        return len(found), []
    done, refused = 0, []
    for instance_id in ids:
        handle = WorkflowInstance(wf, instance_id)
        try:
            await getattr(handle, action)()
            done += 1
        except (InvalidStateError, InstanceNotFoundError) as exc:
            refused.append(str(exc))
    return done, refused


async def _apply_to_filter(wf: Workflow, action: str, filters: dict[str, Any]) -> None:
    """A bulk action over every instance matching a filter, in pages, as a background job."""
    seen: set[str] = set()
    since = filters.get("after")
    while True:  # oldest first, each page from the last creation time seen (keyset), skipping ids already done
        page = await wf.list_instances(
            status=filters.get("status"),
            limit=200,
            newest_first=False,
            created_after=since,
            created_before=filters.get("before"),
        )
        batch = [r.id for r in page.items if r.id not in seen]
        if not batch:
            return
        seen.update(batch)
        since = page.items[-1].created_on
        with contextlib.suppress(StepstoneError):
            await _apply(wf, action, batch)


def _job_done(task: asyncio.Task[None]) -> None:
    _jobs.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("a dashboard bulk action failed", exc_info=task.exception())


@dashboard_page
async def instances_post(view: View) -> Response:
    """``POST /accounts/{account}/workflows/{name}``: ``action=trigger`` or a bulk action."""
    wf = await view.scope.workflow(view.request.path_params["workflow_name"])
    form = await view.form()
    action = _one(form, "action")
    page = f"{view.base}/{q(wf.name)}"
    if action == "trigger":
        params = _json(_one(form, "params"), "params", empty={})
        options: dict[str, Any] = {"params": params}
        if _one(form, "id").strip():
            options["id"] = _one(form, "id").strip()
        try:
            handle = await wf.create(options, trigger="api")
        except StepstoneError as exc:
            return back(page, error=str(exc))
        return back(f"{page}/instances/{q(handle.id)}", notice=f"created instance {handle.id}")
    if action not in BULK:
        raise bad_request(f"action must be trigger or one of {', '.join(BULK)}, got {action[:40]!r}")
    filters = instance_filters(view)
    target = page + ("?" + filter_query(filters) if filter_query(filters) else "")
    if _one(form, "scope") == "filter":
        task = asyncio.get_running_loop().create_task(_apply_to_filter(wf, action, filters))
        _jobs.add(task)
        task.add_done_callback(_job_done)
        return back(target, notice=f"{action}: started on every instance matching the filter")
    ids = [i for i in form.get("sel", []) if i]
    if not ids:
        return back(target, error="select instances first (the checkboxes), or apply to the whole filter")
    done, refused = await _apply(wf, action, ids)
    notice = f"{action}: {done} of {len(ids)} instance(s)"
    return back(target, notice=notice, error="; ".join(refused[:3]) + (" …" if len(refused) > 3 else ""))


async def _instance_action(view: View, handle: WorkflowInstance, form: dict[str, list[str]], action: str) -> str:
    if action == "restart_from":
        step = {"name": _one(form, "step"), "count": int(_one(form, "count", "1") or 1), "type": _one(form, "type")}
        await handle.restart(step)
        return f"restarted from step {step['name']!r}"
    if action == "event":
        event_type = _one(form, "type").strip()
        payload = _json(_one(form, "payload"), "payload", empty=None)
        await handle.send_event(event_type, payload)
        return f"sent event {event_type!r}"
    await getattr(handle, action)()
    return {"pause": "paused", "resume": "resumed", "terminate": "terminated", "restart": "restarted"}[action]


@dashboard_page
async def instance_post(view: View) -> Response:
    """``POST /accounts/{account}/workflows/{name}/instances/{id}``: one lifecycle action, an event or delete."""
    params = view.request.path_params
    handle, record = await view.scope.instance(params["workflow_name"], params["instance_id"])
    form = await view.form()
    action = _one(form, "action")
    if action not in INSTANCE_ACTIONS:
        raise bad_request(f"action must be one of {', '.join(INSTANCE_ACTIONS)}, got {action[:40]!r}")
    page = f"{view.base}/{q(record.workflow)}/instances/{q(record.id)}"
    if action == "delete":
        await handle.delete()
        return back(f"{view.base}/{q(record.workflow)}", notice=f"deleted instance {record.id}")
    try:
        notice = await _instance_action(view, handle, form, action)
    except (StepstoneError, ValueError) as exc:
        return back(page, error=api_error_for(exc).message)
    return back(page, notice=notice)


def _safe_next(target: str, root: str) -> str:
    """Only a path on this server (never ``//elsewhere``) may follow a login."""
    return target if target.startswith("/") and not target.startswith("//") else root + "/"


async def login_page(request: Request) -> Response:
    """``GET /login`` shows the token form; ``POST /login`` checks the token and sets the cookie."""
    sessions = sessions_of(request)
    root = root_of(request)
    nxt = _safe_next(request.query_params.get("next", root + "/"), root)
    message = request.query_params.get("why", "")[:300]
    status = 200
    if request.method == "POST":
        raw = await read_body(request, FORM_CAP, state_of(request).body_timeout)
        form = dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
        nxt = _safe_next(form.get("next", root + "/"), root)
        try:
            origin = request.headers.get("origin")
            if origin and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
                raise ApiError(403, 10000, "cross-origin logins are refused")
            sessions.check_token(request, form.get("token", ""))
        except ApiError as exc:
            log_failure(log, request, exc, exc)
            message, status = exc.message, exc.status
        else:
            response = RedirectResponse(nxt, status_code=303)
            response.set_cookie(
                COOKIE,
                form.get("token", "").strip(),
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/",
            )
            return response
    if sessions.open:
        return RedirectResponse(root + "/", status_code=303)
    html = TEMPLATES.get_template("login.html").render(
        message=message, next=nxt, account=None, path=root + "/login", title="Log in", root=root
    )
    return HTMLResponse(html, status_code=status)


async def logout(request: Request) -> Response:
    """``POST /logout``: forget the token (CSRF-checked, so no other site can log you out)."""
    sessions = sessions_of(request)
    raw = await read_body(request, FORM_CAP, state_of(request).body_timeout)
    try:
        sessions.check_csrf(request, dict(parse_qsl(raw.decode("utf-8", "replace"))))
    except ApiError as exc:
        log_failure(log, request, exc, exc)
        return error_page(request, exc.status, exc.message)
    response = RedirectResponse(root_of(request) + "/login?" + urlencode({"why": "logged out"}), status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
