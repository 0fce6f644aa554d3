"""The OpenAPI 3.1 document served at ``/openapi.json``, written by hand from the routes.

Every response is the v4 envelope; every operation documents its success result and a ``default`` error
envelope, so a schema-driven fuzzer can check both.
"""

from __future__ import annotations

import copy
import functools

from stepstone import __version__
from stepstone.history import EVENT_TYPES
from stepstone.server.openapi_schemas import ID_PATTERN, STATUS, TIME, J, obj, ref, schemas


def _envelope(result: J, *, paged: bool = False) -> J:
    props: J = {
        "success": {"const": True},
        "errors": {"type": "array", "maxItems": 0},
        "messages": {"type": "array"},
        "result": result,
    }
    required = ["success", "errors", "messages", "result"]
    if paged:
        props["result_info"] = ref("ResultInfo")
        required.append("result_info")
    return obj(required, props)


def _op(summary: str, result: J, *, paged: bool = False, params: list[J] | None = None, body: J | None = None) -> J:
    op: J = {
        "summary": summary,
        "parameters": params or [],
        "responses": {
            "200": {
                "description": "success",
                "content": {"application/json": {"schema": _envelope(result, paged=paged)}},
            },
            "default": {
                "description": "an error in the v4 envelope; x-should-retry: false when retrying cannot help",
                "content": {"application/json": {"schema": ref("Failure")}},
            },
        },
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _octet_too(op: J) -> J:
    """A step's output streamed into the blob store is served as its bytes, not in the JSON envelope."""
    op["responses"]["200"]["content"]["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    return op


SSE_EVENT: J = obj(
    ["id", "event", "data"],
    {
        "id": {"type": "string", "pattern": "^[0-9]+$", "description": "the eventId"},
        "event": {"type": "string", "enum": list(EVENT_TYPES)},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "the event as JSON"},
    },
)
"""One server-sent event of the instance event stream."""


def _stream_op(summary: str, params: list[J]) -> J:
    """A ``text/event-stream`` operation: one SSE message per instance event (docs/observe.md)."""
    return {
        "summary": summary,
        "description": (
            "Server-sent events: `id:` the eventId, `event:` the type, `data:` the event as JSON "
            "(instanceId, eventId, timestamp, type and the type's fields). Ends after workflow_completed, "
            "workflow_errored or workflow_terminated. Resume with cursor (or Last-Event-ID) set to the last id."
        ),
        "parameters": [
            *params,
            _query("cursor", {"type": "integer", "minimum": 0}, "start after this eventId"),
            _query("filter", {"type": "string"}, "event types, comma-separated (or the parameter repeated)"),
        ],
        "responses": {
            "200": {
                "description": "the event stream",
                "content": {"text/event-stream": {"schema": SSE_EVENT}},
            },
            "default": {
                "description": "an error in the v4 envelope",
                "content": {"application/json": {"schema": ref("Failure")}},
            },
        },
    }


def _path(name: str, pattern: str | None = None, max_length: int | None = None) -> J:
    schema: J = {"type": "string", "minLength": 1}
    if pattern:
        schema["pattern"] = pattern
    if max_length:
        schema["maxLength"] = max_length
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _query(name: str, schema: J, description: str = "", required: bool = False) -> J:
    q: J = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        q["description"] = description
    return q


ACCOUNT = _path("account_id", "^[a-zA-Z0-9_-]+$", 64)
WORKFLOW = _path("workflow_name", ID_PATTERN, 64)
INSTANCE = _path("instance_id", ID_PATTERN, 100)
VERSION = _path("version_id", "^[a-zA-Z0-9-]+$", 64)
EVENT = _path("event_type", ID_PATTERN, 100)
PAGE = [
    _query("page", {"type": "integer", "minimum": 1, "maximum": 1000000}),
    _query("per_page", {"type": "integer", "minimum": 1, "maximum": 1000}),
]
INSTANCE_LIST = [
    *PAGE,
    _query("cursor", {"type": "string"}, "opaque; from result_info.cursor; wins over page"),
    _query("direction", {"type": "string", "enum": ["asc", "desc"]}),
    _query("status", STATUS),
    _query("date_start", TIME, "ISO-8601; no offset means UTC"),
    _query("date_end", TIME, "ISO-8601; no offset means UTC"),
]
ANY_JSON: J = {"description": "the event payload: any JSON value"}


def _paths() -> J:
    base = "/client/v4/accounts/{account_id}/workflows"
    wf = base + "/{workflow_name}"
    one = wf + "/instances/{instance_id}"
    a, aw, awi = [ACCOUNT], [ACCOUNT, WORKFLOW], [ACCOUNT, WORKFLOW, INSTANCE]
    paths: J = {
        "/health": {"get": _op("The server and its database answer", ref("Health"))},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics in the text exposition format (docs/observe.md)",
                "parameters": [],
                "responses": {
                    "200": {"description": "metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}
                },
            }
        },
        "/client/v4/memberships": {
            "get": _op("The accounts the token may use", {"type": "array", "items": ref("Membership")}, paged=True)
        },
        base: {
            "get": _op(
                "List workflows",
                {"type": "array", "items": ref("Workflow")},
                paged=True,
                params=[*a, *PAGE, _query("search", {"type": "string"}, "name filter")],
            )
        },
        wf: {
            "get": _op("Get a workflow", ref("Workflow"), params=aw),
            "put": _op("Create or update a workflow", ref("WorkflowUpdated"), params=aw, body=ref("WorkflowPut")),
            "delete": _op("Delete a workflow and its instances", ref("Deleted"), params=aw),
        },
        wf + "/versions": {
            "get": _op("List versions", {"type": "array", "items": ref("Version")}, paged=True, params=[*aw, *PAGE])
        },
        wf + "/versions/{version_id}": {"get": _op("Get a version", ref("Version"), params=[*aw, VERSION])},
        wf + "/versions/{version_id}/graph": {
            "get": _op(
                "A version's step graph (drawn from its run(); null without its source)",
                ref("VersionGraph"),
                params=[*aw, VERSION],
            )
        },
        wf + "/instances": {
            "post": _op("Create an instance", ref("InstanceCreated"), params=aw, body=ref("InstanceCreate")),
            "get": _op(
                "List instances",
                {"type": "array", "items": ref("InstanceSummary")},
                paged=True,
                params=[*aw, *INSTANCE_LIST],
            ),
        },
        wf + "/instances/batch": {
            "post": _op(
                "Create up to 100 instances: {count, params} or {instances} answer {created, errors}; the "
                "deprecated array answers the created instances, ids in use skipped",
                {"oneOf": [ref("BatchCreated"), {"type": "array", "items": ref("InstanceCreated")}]},
                params=aw,
                body={
                    "oneOf": [
                        ref("BatchCreate"),
                        {"type": "array", "minItems": 1, "maxItems": 100, "items": ref("InstanceCreate")},
                    ]
                },
            )
        },
        wf + "/instances/batch/delete": {
            "post": _op("Delete instances", ref("BatchDeleted"), params=aw, body=ref("BatchDelete"))
        },
        wf + "/instances/terminate": {
            "put": _op(
                "Terminate every instance in a status (a background job)",
                ref("TerminateJob"),
                params=[
                    *aw,
                    _query(
                        "status",
                        {"type": "string", "enum": ["queued", "running", "paused", "waitingForPause", "waiting"]},
                    ),
                ],
            )
        },
        one: {
            "get": _op(
                "Get an instance with its steps",
                ref("InstanceDetails"),
                params=[
                    *awi,
                    _query("order", {"type": "string", "enum": ["asc", "desc"]}, "step order"),
                    _query("simple", {"type": "string", "enum": ["true", "false"]}, "leave out the steps"),
                ],
            )
        },
        one + "/step": {
            "get": _octet_too(
                _op(
                    "One step's full output",
                    ref("StepResult"),
                    params=[
                        *awi,
                        _query("name", {"type": "string", "minLength": 1}, "the step name with its -N suffix", True),
                        _query("type", {"type": "string", "enum": ["step", "waitForEvent"]}, "", True),
                        _query("attempt", {"type": "integer", "minimum": 1}),
                    ],
                )
            )
        },
        one + "/status": {
            "patch": _op(
                "Pause, resume, terminate or restart", ref("StatusChanged"), params=awi, body=ref("StatusChange")
            ),
            "get": _op(
                "stepstone: the instance's status, output and error (the seed's call)",
                ref("InstanceStatusResult"),
                params=awi,
            ),
        },
        one + "/events": {
            "post": _op(
                "stepstone: send an event given as {type, payload} (the seed's call)",
                ref("EventSent"),
                params=awi,
                body=ref("EventObject"),
            )
        },
        one + "/events/{event_type}": {
            "post": _op("Send an event", ref("EventSent"), params=[*awi, EVENT], body=ANY_JSON)
        },
        one + "/subscribe": {"get": _stream_op("Stream the instance's events (recorded, then live)", awi)},
    }
    for prefix in ("/cdn-cgi/explorer/api", "/cdn-cgi/local/explorer/api"):
        ew, ei = [WORKFLOW], [WORKFLOW, INSTANCE]
        local = "(local explorer) "
        paths |= {
            prefix + "/workflows": {
                "get": _op(
                    local + "List workflows", {"type": "array", "items": ref("Workflow")}, paged=True, params=PAGE
                )
            },
            prefix + "/workflows/{workflow_name}": {
                "get": _op(local + "Get a workflow", ref("Workflow"), params=ew),
                "delete": _op(local + "Delete a workflow", ref("Deleted"), params=ew),
            },
            prefix + "/workflows/{workflow_name}/instances": {
                "get": _op(
                    local + "List instances",
                    {"type": "array", "items": ref("InstanceSummary")},
                    paged=True,
                    params=[*ew, *PAGE, _query("status", STATUS)],
                ),
                "post": _op(
                    local + "Create an instance",
                    ref("InstanceCreated"),
                    params=ew,
                    body=ref("ExplorerInstanceCreate"),
                ),
            },
            prefix + "/workflows/{workflow_name}/instances/{instance_id}": {
                "get": _op(local + "Get an instance", ref("InstanceDetails"), params=ei),
                "delete": _op(local + "Delete an instance", ref("Success"), params=ei),
            },
            prefix + "/workflows/{workflow_name}/instances/{instance_id}/status": {
                "patch": _op(
                    local + "Pause, resume, terminate or restart",
                    ref("StatusChanged"),
                    params=ei,
                    body=ref("ExplorerStatusChange"),
                )
            },
            prefix + "/workflows/{workflow_name}/instances/{instance_id}/events/{event_type}": {
                "post": _op(local + "Send an event", ref("EventSent"), params=[*ei, EVENT], body=ANY_JSON)
            },
            prefix + "/workflows/{workflow_name}/instances/{instance_id}/subscribe": {
                "get": _stream_op(local + "Stream the instance's events", ei)
            },
        }
    return paths


@functools.cache
def _document() -> J:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "stepstone REST API",
            "version": __version__,
            "description": "Cloudflare's v4 Workflows API and the local explorer API, served by stepstone.",
        },
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }


def openapi_document() -> J:
    """The OpenAPI document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())
