"""The OpenAPI 3.1 document served at ``/openapi.json``, written by hand from the routes.

Every response is the v4 envelope; every operation documents its success result and a ``default`` error
envelope, so a schema-driven fuzzer can check both.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from stepstone import __version__
from stepstone.history import EVENT_TYPES

J = dict[str, Any]

STATUS: J = {
    "type": "string",
    "enum": [
        "queued",
        "running",
        "paused",
        "errored",
        "terminated",
        "complete",
        "waitingForPause",
        "waiting",
        "rollingBack",
    ],
}
TIME: J = {"type": "string", "format": "date-time"}
TIME_OR_NULL: J = {"type": ["string", "null"], "format": "date-time"}
NAME_MESSAGE: J = {
    "type": "object",
    "required": ["name", "message"],
    "properties": {
        "name": {"type": "string"},
        "message": {"type": "string"},
        "traceback": {"type": "string", "description": "stepstone: the Python traceback, user frames first"},
    },
}
NAME_MESSAGE_OR_NULL: J = {"oneOf": [{"type": "null"}, NAME_MESSAGE]}
TRIGGER_SOURCE: J = {"type": "string", "enum": ["unknown", "api", "binding", "event", "cron"]}
DURATION: J = {"oneOf": [{"type": "integer", "minimum": 0}, {"type": "string", "minLength": 1}]}
WORKFLOW_REQUIRED = ["id", "name", "class_name", "script_name", "created_on", "modified_on"]
DETAILS_REQUIRED = ["status", "params", "trigger", "versionId", "queued", "start", "end", "success", "error"]
DETAILS_REQUIRED += ["output", "step_count"]
ID_PATTERN = "^[a-zA-Z0-9_][a-zA-Z0-9-_]*$"


def _obj(required: list[str], props: J, *, extra: bool = True) -> J:
    schema: J = {"type": "object", "required": required, "properties": props}
    if not extra:
        schema["additionalProperties"] = False
    return schema


def _ref(name: str) -> J:
    return {"$ref": f"#/components/schemas/{name}"}


def _schemas() -> J:
    result_info = _obj(
        ["page", "per_page", "count", "total_count"],
        {
            "page": {"type": "integer"},
            "per_page": {"type": "integer"},
            "count": {"type": "integer"},
            "total_count": {"type": "integer"},
            "total_pages": {"type": "integer"},
            "cursor": {"type": "string", "description": "opaque; present while a next page exists"},
        },
    )
    workflow_props: J = {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "class_name": {"type": "string"},
        "script_name": {"type": "string"},
        "created_on": TIME,
        "modified_on": TIME,
        "triggered_on": TIME_OR_NULL,
        "version_id": {"type": "string"},
        "instances": {"type": "object", "additionalProperties": {"type": "integer"}},
    }
    version_props: J = {
        "id": {"type": "string"},
        "class_name": {"type": "string"},
        "created_on": TIME,
        "modified_on": TIME,
        "workflow_id": {"type": "string"},
        "has_dag": {"type": "boolean"},
        "language": {"type": "string", "enum": ["javascript", "python"]},
        "limits": {"type": "object"},
        "default_retention": {"type": "object"},
        "concurrency": {"type": "object"},
    }
    attempt = _obj(
        ["start", "end", "success", "error"],
        {"start": TIME, "end": TIME_OR_NULL, "success": {"type": ["boolean", "null"]}, "error": NAME_MESSAGE_OR_NULL},
    )
    step_do = _obj(
        ["type", "name", "start", "end", "success", "attempts", "config", "output"],
        {
            "type": {"const": "step"},
            "name": {"type": "string"},
            "start": TIME,
            "end": TIME_OR_NULL,
            "success": {"type": ["boolean", "null"]},
            "attempts": {"type": "array", "items": attempt},
            "config": {"type": "object"},
            "output": {},
        },
    )
    step_sleep = _obj(
        ["type", "name", "start", "end", "finished", "error"],
        {
            "type": {"const": "sleep"},
            "name": {"type": "string"},
            "start": TIME,
            "end": TIME_OR_NULL,
            "finished": {"type": "boolean"},
            "error": NAME_MESSAGE_OR_NULL,
        },
    )
    step_wait = _obj(
        ["type", "name", "start", "end", "finished", "error", "output"],
        {
            "type": {"const": "waitForEvent"},
            "name": {"type": "string"},
            "start": TIME,
            "end": TIME_OR_NULL,
            "finished": {"type": "boolean"},
            "error": NAME_MESSAGE_OR_NULL,
            "output": {},
            "event_type": {"type": ["string", "null"]},
        },
    )
    step_end = _obj(
        ["type", "trigger"],
        {"type": {"const": "termination"}, "trigger": _obj(["source"], {"source": {"type": "string"}})},
    )
    return {
        "Error": _obj(["code", "message"], {"code": {"type": "integer"}, "message": {"type": "string"}}),
        "Failure": _obj(
            ["success", "errors", "messages", "result"],
            {
                "success": {"const": False},
                "errors": {"type": "array", "minItems": 1, "items": _ref("Error")},
                "messages": {"type": "array"},
                "result": {"type": "null"},
            },
        ),
        "ResultInfo": result_info,
        "Workflow": _obj([*WORKFLOW_REQUIRED, "instances"], workflow_props),
        "WorkflowUpdated": _obj(
            [*WORKFLOW_REQUIRED, "version_id", "is_deleted", "terminator_running"],
            workflow_props | {"is_deleted": {"type": "number"}, "terminator_running": {"type": "number"}},
        ),
        "WorkflowPut": _obj(
            ["class_name", "script_name"],
            {
                "class_name": {"type": "string", "minLength": 1, "maxLength": 256},
                "script_name": {"type": "string", "minLength": 1, "maxLength": 256},
                "limits": _obj([], {"steps": {"type": "integer", "minimum": 1, "maximum": 25000}}, extra=False),
                "default_retention": _obj(
                    [], {"error_retention": DURATION, "success_retention": DURATION}, extra=False
                ),
                "concurrency": _obj([], {"limit": {"type": "integer", "minimum": 1}}, extra=False),
                "schedules": {
                    "type": "array",
                    "items": _obj(["cron"], {"cron": {"type": "string", "minLength": 1, "maxLength": 256}}),
                },
            },
            extra=False,
        ),
        "Deleted": _obj(["status"], {"status": {"const": "ok"}, "success": {"type": "boolean"}}),
        "Version": _obj(
            ["id", "class_name", "created_on", "modified_on", "workflow_id", "has_dag", "language"], version_props
        ),
        "VersionGraph": _obj(
            ["id", "class_name", "created_on", "modified_on", "workflow_id", "graph"],
            version_props | {"graph": {"type": ["object", "null"]}},
        ),
        "InstanceCreate": _obj(
            [],
            {
                "instance_id": {"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 100},
                "id": {
                    "type": "string",
                    "pattern": ID_PATTERN,
                    "minLength": 1,
                    "maxLength": 100,
                    "description": "stepstone: an alias of instance_id (the seed's form)",
                },
                "params": {"description": "any JSON value; a string holding JSON is decoded (the SDK's form)"},
                "instance_retention": _obj(
                    [], {"error_retention": DURATION, "success_retention": DURATION}, extra=False
                ),
                "location_hint": {
                    "type": "string",
                    "enum": ["wnam", "weur", "enam", "eeur", "apac", "apac-ne", "apac-se", "oc", "sam", "afr", "me"],
                },
            },
            extra=False,
        ),
        "ExplorerInstanceCreate": _obj(
            [],
            {
                "id": {"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 100},
                "params": {"description": "any JSON value"},
            },
            extra=False,
        ),
        "InstanceCreated": _obj(
            ["id", "status", "version_id", "workflow_id"],
            {
                "id": {"type": "string"},
                "status": STATUS,
                "version_id": {"type": "string"},
                "workflow_id": {"type": "string"},
                "trigger_source": TRIGGER_SOURCE,
            },
        ),
        "InstanceSummary": _obj(
            ["id", "status", "created_on", "modified_on", "version_id", "workflow_id"],
            {
                "id": {"type": "string"},
                "status": STATUS,
                "created_on": TIME,
                "modified_on": TIME,
                "started_on": TIME_OR_NULL,
                "ended_on": TIME_OR_NULL,
                "version_id": {"type": "string"},
                "workflow_id": {"type": "string"},
                "trigger_source": TRIGGER_SOURCE,
            },
        ),
        "Step": {"oneOf": [step_do, step_sleep, step_wait, step_end]},
        "InstanceDetails": _obj(
            DETAILS_REQUIRED,
            {
                "status": STATUS,
                "params": {},
                "trigger": _obj(["source"], {"source": TRIGGER_SOURCE}),
                "versionId": {"type": "string"},
                "queued": TIME,
                "start": TIME_OR_NULL,
                "end": TIME_OR_NULL,
                "success": {"type": ["boolean", "null"]},
                "error": NAME_MESSAGE_OR_NULL,
                "output": {},
                "steps": {"type": "array", "items": _ref("Step"), "description": "left out when simple=true"},
                "step_count": {"type": "integer"},
                "rollback": {"type": ["object", "null"]},
            },
        ),
        "StepResult": _obj(
            ["status", "error", "output"],
            {
                "status": {"type": "string", "enum": ["running", "waiting", "complete", "errored"]},
                "error": NAME_MESSAGE_OR_NULL,
                "output": {},
                "event_type": {"type": ["string", "null"]},
            },
        ),
        "StatusChange": {
            "type": "object",
            "required": ["status"],
            "additionalProperties": False,
            "properties": {
                "status": {"type": "string", "enum": ["pause", "resume", "terminate", "restart"]},
                "rollback": {"type": "boolean", "description": "terminate only"},
                "from": _obj(
                    ["name"],
                    {
                        "name": {"type": "string", "minLength": 1},
                        "count": {"type": "integer", "minimum": 1},
                        "type": {"type": "string", "enum": ["do", "sleep", "waitForEvent"]},
                    },
                    extra=False,
                ),
            },
        },
        "ExplorerStatusChange": _obj(
            ["action"],
            {"action": {"type": "string", "enum": ["pause", "resume", "terminate", "restart"]}},
            extra=False,
        ),
        "StatusChanged": _obj(
            ["status", "timestamp"], {"status": STATUS, "timestamp": TIME, "success": {"type": "boolean"}}
        ),
        "InstanceStatusResult": _obj(
            ["status", "output", "error"], {"status": STATUS, "output": {}, "error": NAME_MESSAGE_OR_NULL}
        ),
        "EventObject": _obj(
            ["type"],
            {
                "type": {"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 100},
                "payload": {"description": "any JSON value"},
            },
            extra=False,
        ),
        "EventSent": _obj(
            ["instanceId", "timestamp"],
            {"instanceId": {"type": "string"}, "timestamp": TIME, "success": {"type": "boolean"}},
        ),
        "BatchCreate": {
            "oneOf": [
                _obj(
                    ["count"],
                    {
                        "count": {"type": "integer", "minimum": 1, "maximum": 100},
                        "params": {"description": "any JSON value, the params of every instance"},
                        "instance_retention": _obj(
                            [], {"error_retention": DURATION, "success_retention": DURATION}, extra=False
                        ),
                        "location_hint": {"type": "string"},
                    },
                    extra=False,
                ),
                _obj(
                    ["instances"],
                    {"instances": {"type": "array", "minItems": 1, "maxItems": 100, "items": _ref("InstanceCreate")}},
                    extra=False,
                ),
            ]
        },
        "BatchCreated": _obj(
            ["created", "errors"],
            {
                "created": {"type": "array", "items": _ref("InstanceCreated")},
                "errors": {
                    "type": "array",
                    "items": _obj(
                        ["index", "id", "code", "message"],
                        {
                            "index": {"type": "integer"},
                            "id": {"type": "string"},
                            "code": {"type": "integer", "enum": [10405, 10415]},
                            "message": {"type": "string"},
                        },
                    ),
                },
            },
        ),
        "BatchDelete": _obj(
            ["instances"],
            {"instances": {"type": "array", "minItems": 1, "maxItems": 100, "items": {"type": "string"}}},
            extra=False,
        ),
        "BatchDeleted": _obj(
            ["deleted", "errors"],
            {
                "deleted": {"type": "array", "items": _obj(["id"], {"id": {"type": "string"}})},
                "errors": {
                    "type": "array",
                    "items": _obj(
                        ["id", "code", "message"],
                        {"id": {"type": "string"}, "code": {"type": "integer"}, "message": {"type": "string"}},
                    ),
                },
            },
        ),
        "TerminateJob": _obj(["status"], {"status": {"type": "string", "enum": ["ok", "already_running"]}}),
        "Health": _obj(
            ["status"], {"status": {"const": "ok"}, "version": {"type": "string"}, "workflows": {"type": "integer"}}
        ),
        "Membership": _obj(["id", "account"], {"id": {"type": "string"}, "account": {"type": "object"}}),
        "Success": {"type": "object", "properties": {"success": {"type": "boolean"}}},
    }


def _envelope(result: J, *, paged: bool = False) -> J:
    props: J = {
        "success": {"const": True},
        "errors": {"type": "array", "maxItems": 0},
        "messages": {"type": "array"},
        "result": result,
    }
    required = ["success", "errors", "messages", "result"]
    if paged:
        props["result_info"] = _ref("ResultInfo")
        required.append("result_info")
    return _obj(required, props)


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
                "content": {"application/json": {"schema": _ref("Failure")}},
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


SSE_EVENT: J = _obj(
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
                "content": {"application/json": {"schema": _ref("Failure")}},
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
        "/health": {"get": _op("The server and its database answer", _ref("Health"))},
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
            "get": _op("The accounts the token may use", {"type": "array", "items": _ref("Membership")}, paged=True)
        },
        base: {
            "get": _op(
                "List workflows",
                {"type": "array", "items": _ref("Workflow")},
                paged=True,
                params=[*a, *PAGE, _query("search", {"type": "string"}, "name filter")],
            )
        },
        wf: {
            "get": _op("Get a workflow", _ref("Workflow"), params=aw),
            "put": _op("Create or update a workflow", _ref("WorkflowUpdated"), params=aw, body=_ref("WorkflowPut")),
            "delete": _op("Delete a workflow and its instances", _ref("Deleted"), params=aw),
        },
        wf + "/versions": {
            "get": _op("List versions", {"type": "array", "items": _ref("Version")}, paged=True, params=[*aw, *PAGE])
        },
        wf + "/versions/{version_id}": {"get": _op("Get a version", _ref("Version"), params=[*aw, VERSION])},
        wf + "/versions/{version_id}/graph": {
            "get": _op(
                "A version's step graph (drawn from its run(); null without its source)",
                _ref("VersionGraph"),
                params=[*aw, VERSION],
            )
        },
        wf + "/instances": {
            "post": _op("Create an instance", _ref("InstanceCreated"), params=aw, body=_ref("InstanceCreate")),
            "get": _op(
                "List instances",
                {"type": "array", "items": _ref("InstanceSummary")},
                paged=True,
                params=[*aw, *INSTANCE_LIST],
            ),
        },
        wf + "/instances/batch": {
            "post": _op(
                "Create up to 100 instances: {count, params} or {instances} answer {created, errors}; the "
                "deprecated array answers the created instances, ids in use skipped",
                {"oneOf": [_ref("BatchCreated"), {"type": "array", "items": _ref("InstanceCreated")}]},
                params=aw,
                body={
                    "oneOf": [
                        _ref("BatchCreate"),
                        {"type": "array", "minItems": 1, "maxItems": 100, "items": _ref("InstanceCreate")},
                    ]
                },
            )
        },
        wf + "/instances/batch/delete": {
            "post": _op("Delete instances", _ref("BatchDeleted"), params=aw, body=_ref("BatchDelete"))
        },
        wf + "/instances/terminate": {
            "put": _op(
                "Terminate every instance in a status (a background job)",
                _ref("TerminateJob"),
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
                _ref("InstanceDetails"),
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
                    _ref("StepResult"),
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
                "Pause, resume, terminate or restart", _ref("StatusChanged"), params=awi, body=_ref("StatusChange")
            ),
            "get": _op(
                "stepstone: the instance's status, output and error (the seed's call)",
                _ref("InstanceStatusResult"),
                params=awi,
            ),
        },
        one + "/events": {
            "post": _op(
                "stepstone: send an event given as {type, payload} (the seed's call)",
                _ref("EventSent"),
                params=awi,
                body=_ref("EventObject"),
            )
        },
        one + "/events/{event_type}": {
            "post": _op("Send an event", _ref("EventSent"), params=[*awi, EVENT], body=ANY_JSON)
        },
        one + "/subscribe": {"get": _stream_op("Stream the instance's events (recorded, then live)", awi)},
    }
    for prefix in ("/cdn-cgi/explorer/api", "/cdn-cgi/local/explorer/api"):
        ew, ei = [WORKFLOW], [WORKFLOW, INSTANCE]
        local = "(local explorer) "
        paths |= {
            prefix + "/workflows": {
                "get": _op(
                    local + "List workflows", {"type": "array", "items": _ref("Workflow")}, paged=True, params=PAGE
                )
            },
            prefix + "/workflows/{workflow_name}": {
                "get": _op(local + "Get a workflow", _ref("Workflow"), params=ew),
                "delete": _op(local + "Delete a workflow", _ref("Deleted"), params=ew),
            },
            prefix + "/workflows/{workflow_name}/instances": {
                "get": _op(
                    local + "List instances",
                    {"type": "array", "items": _ref("InstanceSummary")},
                    paged=True,
                    params=[*ew, *PAGE, _query("status", STATUS)],
                ),
                "post": _op(
                    local + "Create an instance",
                    _ref("InstanceCreated"),
                    params=ew,
                    body=_ref("ExplorerInstanceCreate"),
                ),
            },
            prefix + "/workflows/{workflow_name}/instances/{instance_id}": {
                "get": _op(local + "Get an instance", _ref("InstanceDetails"), params=ei),
                "delete": _op(local + "Delete an instance", _ref("Success"), params=ei),
            },
            prefix + "/workflows/{workflow_name}/instances/{instance_id}/status": {
                "patch": _op(
                    local + "Pause, resume, terminate or restart",
                    _ref("StatusChanged"),
                    params=ei,
                    body=_ref("ExplorerStatusChange"),
                )
            },
            prefix + "/workflows/{workflow_name}/instances/{instance_id}/events/{event_type}": {
                "post": _op(local + "Send an event", _ref("EventSent"), params=[*ei, EVENT], body=ANY_JSON)
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
            "schemas": _schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
    }


def openapi_document() -> J:
    """The OpenAPI document (a fresh copy: callers may change it)."""
    return copy.deepcopy(_document())
