"""The local explorer API that ``wrangler workflows ... --local --port P`` talks to.

Served under ``/cdn-cgi/explorer/api`` (wrangler 4.86) and ``/cdn-cgi/local/explorer/api`` (newer), with the
v4 envelope. It differs from the v4 API in a few names: create takes ``id``, the status PATCH takes
``action``, and results answer ``success: true``. It has no account in its paths: it acts on the
default account (``local``, the one ``stepstone dev``'s project workflows and the Python API use), and with API
tokens configured it needs a token allowed every account (``"*"``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from stepstone.server.body import read_json
from stepstone.server.envelope import ok
from stepstone.server.instances import change_status, create_one, create_result, describe, instance_page, send_event
from stepstone.server.state import Handler, scope_of
from stepstone.server.stream import subscribe
from stepstone.server.workflows import delete_workflow, get_workflow, list_workflows

PREFIXES = ("/cdn-cgi/explorer/api", "/cdn-cgi/local/explorer/api")


async def create(request: Request) -> Response:
    """``POST /workflows/{name}/instances`` with ``{"id", "params"}``."""
    scope = scope_of(request)
    body = await read_json(request, scope.state.body_cap, scope.state.body_timeout, empty={})
    record = await create_one(scope, request.path_params["workflow_name"], body, id_key="id")
    return ok(create_result(record))


async def instances(request: Request) -> Response:
    """``GET /workflows/{name}/instances?status&per_page&page``."""
    items, info = await instance_page(scope_of(request), request)
    info.pop("cursor", None)
    return ok(items, result_info=info)


async def details(request: Request) -> Response:
    """``GET /workflows/{name}/instances/{id}``."""
    return ok(await describe(scope_of(request), request))


async def delete_instance(request: Request) -> Response:
    """``DELETE /workflows/{name}/instances/{id}``."""
    handle, _ = await scope_of(request).instance(
        request.path_params["workflow_name"], request.path_params["instance_id"]
    )
    await handle.delete()
    return ok({"success": True})


async def status(request: Request) -> Response:
    """``PATCH /workflows/{name}/instances/{id}/status`` with ``{"action": ...}`` (``status`` also accepted)."""
    scope = scope_of(request)
    body = await read_json(request, scope.state.body_cap, scope.state.body_timeout)
    key = "status" if isinstance(body, dict) and "action" not in body and "status" in body else "action"
    return ok(await change_status(scope, request, body, key=key) | {"success": True})


async def event(request: Request) -> Response:
    """``POST /workflows/{name}/instances/{id}/events/{event_type}``."""
    return ok(await send_event(scope_of(request), request) | {"success": True})


def explorer_routes() -> list[tuple[str, str, Handler]]:
    """(method, path, handler) for each explorer route, relative to a prefix."""
    wf = "/workflows/{workflow_name}"
    inst = wf + "/instances/{instance_id}"
    return [
        ("GET", "/workflows", list_workflows),
        ("GET", "/workflows/", list_workflows),
        ("GET", wf, get_workflow),
        ("DELETE", wf, delete_workflow),
        ("POST", wf + "/instances", create),
        ("GET", wf + "/instances", instances),
        ("GET", wf + "/instances/", instances),
        ("GET", inst, details),
        ("DELETE", inst, delete_instance),
        ("PATCH", inst + "/status", status),
        ("POST", inst + "/events/{event_type}", event),
        ("GET", inst + "/subscribe", subscribe),
    ]
