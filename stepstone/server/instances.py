"""Instances: ``/client/v4/accounts/{account_id}/workflows/{name}/instances[...]``.

The functions without a ``Request`` (``create_options``, ``change_status``, ...) are shared with the local
explorer API, which differs only in field names.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from stepstone.binding import Workflow
from stepstone.details import instance_summary, iso, step_blob, step_result
from stepstone.errors import InstanceNotFoundError, InvalidStateError, StorageError
from stepstone.instance import WorkflowInstance
from stepstone.models import FINISHED, STATUSES, InstanceRecord
from stepstone.observe.tracing import valid_traceparent
from stepstone.server.body import json_object, only_keys, query_choice, query_int, query_time, read_json
from stepstone.server.envelope import INSTANCE_NOT_FOUND, ApiError, bad_request, ok
from stepstone.server.state import ADDRESSABLE_ID, Scope, ServerState, scope_of
from stepstone.server.workflows import MAX_PER_PAGE, page_info

log = logging.getLogger("stepstone.server")

LIST_STATUSES: Final = (*STATUSES, "rollingBack")
TERMINABLE: Final = ("queued", "running", "paused", "waitingForPause", "waiting")
LOCATION_HINTS: Final = ("wnam", "weur", "enam", "eeur", "apac", "apac-ne", "apac-se", "oc", "sam", "afr", "me")
ACTIONS: Final = ("pause", "resume", "terminate", "restart")
STEP_NOT_FOUND = 10404


def create_result(record: InstanceRecord) -> dict[str, Any]:
    """What creating an instance answers."""
    return {
        "id": record.id,
        "status": record.status,
        "version_id": record.version_id,
        "workflow_id": record.workflow,
        "trigger_source": record.trigger_source,
    }


def decode_params(value: Any) -> Any:
    """``params`` as sent: the SDK sends a JSON-encoded string, wrangler an object; a string that parses as
    JSON is decoded, any other value is kept."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def create_options(body: Any, *, id_key: str = "instance_id") -> dict[str, Any]:
    """The binding's ``create`` options from a create body (``id_key`` is ``id`` in the explorer API)."""
    body = json_object(body, "an instance to create")
    keys: tuple[str, ...] = (id_key, "params", "instance_retention", "location_hint")
    if id_key != "id":  # the seed's (and the explorer's) ``id`` is an alias of ``instance_id``
        if body.get("id") is not None and body.get(id_key) is not None and body["id"] != body[id_key]:
            raise bad_request(f"id and {id_key} name different instances: give one of them")
        if body.get(id_key) is None and "id" in body:
            body = {**{k: v for k, v in body.items() if k != "id"}, id_key: body["id"]}
        keys = (*keys, "id")
    only_keys(body, keys, "create instance")
    options: dict[str, Any] = {"params": decode_params(body.get("params", {}))}
    if body.get(id_key) is not None:
        options["id"] = body[id_key]
    retention = body.get("instance_retention")
    if retention is not None:
        retention = json_object(retention, "instance_retention")
        only_keys(retention, ("error_retention", "success_retention"), "instance_retention")
        for key, value in retention.items():
            if not isinstance(value, int | float | str) or isinstance(value, bool):
                raise bad_request(f"instance_retention.{key} must be milliseconds or a string like '5 minutes'")
        options["retention"] = retention
    hint = body.get("location_hint")
    if hint is not None and hint not in LOCATION_HINTS:
        raise bad_request(f"location_hint {hint!r} must be one of {', '.join(LOCATION_HINTS)}")
    return options


async def create_one(
    scope: Scope, name: str, body: Any, *, id_key: str = "instance_id", traceparent: str | None = None
) -> InstanceRecord:
    """Create an instance; it stays queued until a worker that registered the workflow claims it.

    A malformed ``traceparent`` header is ignored, as W3C Trace Context says (the trace restarts)."""
    wf = await scope.workflow(name)
    parent = traceparent if valid_traceparent(traceparent) else None
    handle = await wf.create(create_options(body, id_key=id_key), trigger="api", traceparent=parent)
    return await handle.record()


async def create_instance(request: Request) -> Response:
    """``POST /instances``."""
    scope = scope_of(request)
    state = scope.state
    body = await read_json(request, state.body_cap, state.body_timeout, empty={})
    record = await create_one(
        scope, request.path_params["workflow_name"], body, traceparent=request.headers.get("traceparent")
    )
    return ok(create_result(record))


def batch_options(body: Any) -> dict[str, Any]:
    """The binding's ``create_batch`` object form from a batch body: ``{"count": n, "params", "instance_retention",
    "location_hint"}`` or ``{"instances": [create bodies]}``."""
    if "instances" in body:
        only_keys(body, ("instances",), "batch")
        items = body["instances"]
        if not isinstance(items, list):
            raise bad_request('instances must be a JSON array of instances: [{"instance_id": ..., "params": ...}]')
        return {"instances": [create_options(item) for item in items]}
    if "count" not in body:
        raise bad_request('the batch must be {"count": n, "params": ...}, {"instances": [...]} or a JSON array')
    only_keys(body, ("count", "params", "instance_retention", "location_hint"), "batch")
    shared = create_options({k: v for k, v in body.items() if k != "count"})
    return {"count": body["count"], **shared}


async def create_batch(request: Request) -> Response:
    """``POST /instances/batch``.

    A JSON array (the deprecated form) answers the created instances, ids already in use skipped and left out;
    ``{"count": n, ...}`` or ``{"instances": [...]}`` answers ``{"created": [...], "errors": [{"index", "id",
    "code", "message"}]}``."""
    scope = scope_of(request)
    state = scope.state
    wf = await scope.workflow(request.path_params["workflow_name"])
    body = await read_json(request, state.body_cap, state.body_timeout)
    if isinstance(body, list):
        result = await wf.create_batch({"instances": [create_options(item) for item in body]}, trigger="api")
    elif isinstance(body, dict):
        result = await wf.create_batch(batch_options(body), trigger="api")
    else:
        raise bad_request(
            'the batch must be {"count": n, "params": ...}, {"instances": [{"instance_id": ..., "params": ...}]} '
            "or a JSON array of instances"
        )
    records = await asyncio.gather(*(h.record() for h in result.created))
    created = [create_result(r) for r in records]
    return ok(created if isinstance(body, list) else {"created": created, "errors": result.errors})


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode().rstrip("=")


def _offset_from_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        offset = json.loads(raw)["o"]
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise bad_request("cursor is not one this server returned: pass result_info.cursor unchanged") from None
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise bad_request("cursor is not one this server returned: pass result_info.cursor unchanged")
    return offset


async def instance_page(
    scope: Scope, request: Request, *, default_per_page: int = 50
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A page of instances for ``page`` or ``cursor`` (``cursor`` wins), with its ``result_info``.

    ``result_info.cursor`` leads to the next page and is present only while one exists.
    """
    wf = await scope.workflow(request.path_params["workflow_name"])
    per_page = query_int(request, "per_page", default_per_page, low=1, high=MAX_PER_PAGE)
    status = query_choice(request, "status", LIST_STATUSES, None)
    direction = query_choice(request, "direction", ("asc", "desc"), "desc")
    after, before = query_time(request, "date_start"), query_time(request, "date_end")
    cursor = request.query_params.get("cursor")
    if cursor:
        offset = _offset_from_cursor(cursor)
    else:
        offset = (query_int(request, "page", 1, low=1, high=1_000_000) - 1) * per_page
    found = await wf.list_instances(
        status=status,
        limit=per_page,
        offset=offset,
        newest_first=direction == "desc",
        created_after=after,
        created_before=before,
    )
    items, total = found.items, found.total
    info = page_info(offset // per_page + 1, per_page, len(items), total)
    if items and offset + len(items) < total:
        info["cursor"] = _cursor(offset + len(items))
    listed = [instance_summary(r) for r in items]
    if status == "rollingBack":  # what REST calls them (their stored status is queued, running or waiting)
        for item in listed:
            item["status"] = "rollingBack"
    return listed, info


async def list_instances(request: Request) -> Response:
    """``GET /instances?page|cursor&per_page&status&direction&date_start&date_end``."""
    items, info = await instance_page(scope_of(request), request)
    return ok(items, result_info=info)


async def describe(scope: Scope, request: Request) -> dict[str, Any]:
    """The instance details document, honouring ``order`` and ``simple``."""
    handle, _ = await scope.instance(request.path_params["workflow_name"], request.path_params["instance_id"])
    order = query_choice(request, "order", ("asc", "desc"), "asc")
    simple = query_choice(request, "simple", ("true", "false"), "false")
    return await handle.describe(order=order or "asc", simple=simple == "true")


async def get_instance(request: Request) -> Response:
    """``GET /instances/{id}?order&simple``."""
    return ok(await describe(scope_of(request), request))


async def get_step(request: Request) -> Response:
    """``GET /instances/{id}/step?name=<name-N>&type=step|waitForEvent&attempt=``."""
    scope = scope_of(request)
    handle, record = await scope.instance(request.path_params["workflow_name"], request.path_params["instance_id"])
    name = request.query_params.get("name")
    if not name:
        raise bad_request("query parameter name is required: the step name with its suffix, e.g. 'load-1'")
    kind = query_choice(request, "type", ("step", "waitForEvent"), None)
    if kind is None:
        raise bad_request("query parameter type is required: step or waitForEvent")
    attempt = None
    if request.query_params.get("attempt"):
        attempt = query_int(request, "attempt", 1, low=1, high=1_000_000)
    steps = await handle.history()
    ref = step_blob(steps, name, attempt=attempt) if kind == "step" else None
    if ref is not None:
        # a streamed output (Cloudflare: a ReadableStream step result) is served as its bytes, streamed
        blob = await handle.output_stream(ref)
        chunks = aiter(blob)
        try:  # read the first chunk now, so a blob gone meanwhile is a 404, not a response cut short
            first = await anext(chunks, b"")
        except StorageError as exc:
            raise ApiError(
                404, STEP_NOT_FOUND, f"the output of step {name[:120]!r} is no longer stored: {exc}"
            ) from exc

        async def body() -> AsyncIterator[bytes]:
            if first:
                yield first
            async for chunk in chunks:
                yield chunk

        headers = {"Content-Length": str(blob.size)}
        return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)
    doc = step_result(steps, name, kind=kind, attempt=attempt)
    if doc is None:
        what = f"attempt {attempt} of {kind}" if attempt else kind
        raise ApiError(
            404,
            STEP_NOT_FOUND,
            f"{what} {name[:120]!r} not found in instance {record.id!r}: use a name from the instance's steps, "
            "with its -N suffix",
        )
    return ok(doc)


async def change_status(scope: Scope, request: Request, body: Any, *, key: str) -> dict[str, Any]:
    """Pause, resume, terminate or restart; ``key`` names the action field (``status``, explorer ``action``)."""
    handle, _ = await scope.instance(request.path_params["workflow_name"], request.path_params["instance_id"])
    body = json_object(body, "the request body")
    only_keys(body, (key, "rollback", "from"), "change status")
    action = body.get(key)
    if action not in ACTIONS:
        raise bad_request(f"{key} must be one of {', '.join(ACTIONS)}, got {action!r}")
    if "rollback" in body and (action != "terminate" or not isinstance(body["rollback"], bool)):
        raise bad_request("rollback must be true or false, and only with terminate")
    if "from" in body and action != "restart":
        raise bad_request("from is only allowed with restart")
    if action == "pause":
        await handle.pause()
    elif action == "resume":
        await handle.resume()
    elif action == "terminate":
        await handle.terminate(rollback=body.get("rollback", False))
    else:
        start = body.get("from")
        if start is not None:
            start = json_object(start, "from")
            only_keys(start, ("name", "count", "type"), "from")
        await handle.restart(start)
    record = await handle.record()
    status: str = record.status
    if body.get("rollback") is True and action == "terminate" and status not in FINISHED:
        status = "rollingBack"  # its undo handlers run before it ends terminated
    return {"status": status, "timestamp": iso(scope.state.engine.clock.now())}


async def patch_status(request: Request) -> Response:
    """``PATCH /instances/{id}/status`` with ``{"status": "pause"|"resume"|"terminate"|"restart"}``."""
    scope = scope_of(request)
    state = scope.state
    body = await read_json(request, state.body_cap, state.body_timeout)
    return ok(await change_status(scope, request, body, key="status"))


async def send_event(scope: Scope, request: Request) -> dict[str, Any]:
    """Send the request body as an event's payload (an empty body is ``null``)."""
    handle, _ = await scope.instance(request.path_params["workflow_name"], request.path_params["instance_id"])
    state = scope.state
    payload = await read_json(request, state.body_cap, state.body_timeout, empty=None)
    await handle.send_event(request.path_params["event_type"], payload)
    return {"instanceId": handle.id, "timestamp": iso(state.engine.clock.now())}


async def post_event(request: Request) -> Response:
    """``POST /instances/{id}/events/{event_type}``."""
    return ok(await send_event(scope_of(request), request))


async def post_event_object(request: Request) -> Response:
    """``POST /instances/{id}/events`` with ``{"type": ..., "payload": ...}``: the seed's form, an alias of
    ``POST /instances/{id}/events/{type}`` with the payload as the body."""
    scope = scope_of(request)
    state = scope.state
    handle, _ = await scope.instance(request.path_params["workflow_name"], request.path_params["instance_id"])
    body = json_object(await read_json(request, state.body_cap, state.body_timeout), "the event")
    only_keys(body, ("type", "payload"), "send event")
    if not isinstance(body.get("type"), str):
        raise bad_request('the event needs a "type": {"type": "approval", "payload": {...}}')
    await handle.send_event(body["type"], body.get("payload"))
    return ok({"instanceId": handle.id, "timestamp": iso(state.engine.clock.now())})


async def get_status(request: Request) -> Response:
    """``GET /instances/{id}/status``: the seed's call, what the binding's ``status()`` gives: ``{"status",
    "output", "error"}`` (``error`` is ``{"name", "message"}`` or null)."""
    handle, _ = await scope_of(request).instance(
        request.path_params["workflow_name"], request.path_params["instance_id"]
    )
    doc = await handle.describe(simple=True)
    return ok({"status": doc["status"], "output": doc["output"], "error": doc["error"]})


async def batch_delete(request: Request) -> Response:
    """``POST /instances/batch/delete`` with ``{"instances": [ids]}``; unknown ids are per-item errors."""
    scope = scope_of(request)
    state = scope.state
    wf = await scope.workflow(request.path_params["workflow_name"])
    body = json_object(await read_json(request, state.body_cap, state.body_timeout), "the request body")
    only_keys(body, ("instances",), "batch delete")
    ids = body.get("instances")
    limit = wf.limits.batch_max
    if not isinstance(ids, list) or not 1 <= len(ids) <= limit:
        raise bad_request(f"instances must be an array of 1 to {limit} instance ids")
    for item in ids:
        if not isinstance(item, str) or not ADDRESSABLE_ID.fullmatch(item):
            raise bad_request(f"instance id {item!r} is invalid; nothing was deleted")
    found = set(await wf.delete_instances(list(dict.fromkeys(ids))))
    deleted = [{"id": i} for i in ids if i in found]
    errors = [
        {"id": i, "code": INSTANCE_NOT_FOUND, "message": f"instance {i!r} not found in workflow {wf.name!r}"}
        for i in ids
        if i not in found
    ]
    return ok({"deleted": deleted, "errors": errors})


async def _terminate_all(wf: Workflow, statuses: tuple[str, ...]) -> None:
    for status in statuses:
        seen: set[str] = set()
        while True:
            page = await wf.list_instances(status=status, limit=100, newest_first=False)
            batch = [r for r in page.items if r.id not in seen]
            if not batch:
                break
            for record in batch:
                seen.add(record.id)
                # it may have finished or been deleted meanwhile
                with contextlib.suppress(InvalidStateError, InstanceNotFoundError):
                    await WorkflowInstance(wf, record.id).terminate()


def _job_done(state: ServerState, key: tuple[str, str], task: asyncio.Task[None]) -> None:
    if state.terminators.get(key) is task:
        del state.terminators[key]
    if not task.cancelled() and task.exception() is not None:
        log.error("terminating instances of %r failed", key[1], exc_info=task.exception())


async def terminate_by_status(request: Request) -> Response:
    """``PUT /instances/terminate?status=``: a background job; ``already_running`` while one runs."""
    scope = scope_of(request)
    state = scope.state
    wf = await scope.workflow(request.path_params["workflow_name"])
    status = query_choice(request, "status", TERMINABLE, None)
    if scope.terminator_running(wf.name):
        return ok({"status": "already_running"})
    task = asyncio.get_running_loop().create_task(_terminate_all(wf, (status,) if status else TERMINABLE))
    key = (scope.account.id, wf.name)
    state.terminators[key] = task
    task.add_done_callback(lambda t: _job_done(state, key, t))
    return ok({"status": "ok"})
