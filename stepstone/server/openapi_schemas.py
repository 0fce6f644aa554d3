"""The component schemas of the OpenAPI document (:mod:`stepstone.server.openapi`): workflows, instances, their
details, versions, the event stream's events and the request bodies, as the routes return and read them.
"""

from __future__ import annotations

from typing import Any

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


def obj(required: list[str], props: J, *, extra: bool = True) -> J:
    schema: J = {"type": "object", "required": required, "properties": props}
    if not extra:
        schema["additionalProperties"] = False
    return schema


def ref(name: str) -> J:
    return {"$ref": f"#/components/schemas/{name}"}


def schemas() -> J:
    result_info = obj(
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
    attempt = obj(
        ["start", "end", "success", "error"],
        {"start": TIME, "end": TIME_OR_NULL, "success": {"type": ["boolean", "null"]}, "error": NAME_MESSAGE_OR_NULL},
    )
    step_do = obj(
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
    step_sleep = obj(
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
    step_wait = obj(
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
    step_end = obj(
        ["type", "trigger"],
        {"type": {"const": "termination"}, "trigger": obj(["source"], {"source": {"type": "string"}})},
    )
    return {
        "Error": obj(["code", "message"], {"code": {"type": "integer"}, "message": {"type": "string"}}),
        "Failure": obj(
            ["success", "errors", "messages", "result"],
            {
                "success": {"const": False},
                "errors": {"type": "array", "minItems": 1, "items": ref("Error")},
                "messages": {"type": "array"},
                "result": {"type": "null"},
            },
        ),
        "ResultInfo": result_info,
        "Workflow": obj([*WORKFLOW_REQUIRED, "instances"], workflow_props),
        "WorkflowUpdated": obj(
            [*WORKFLOW_REQUIRED, "version_id", "is_deleted", "terminator_running"],
            workflow_props | {"is_deleted": {"type": "number"}, "terminator_running": {"type": "number"}},
        ),
        "WorkflowPut": obj(
            ["class_name", "script_name"],
            {
                "class_name": {"type": "string", "minLength": 1, "maxLength": 256},
                "script_name": {"type": "string", "minLength": 1, "maxLength": 256},
                "limits": obj([], {"steps": {"type": "integer", "minimum": 1, "maximum": 25000}}, extra=False),
                "default_retention": obj([], {"error_retention": DURATION, "success_retention": DURATION}, extra=False),
                "concurrency": obj([], {"limit": {"type": "integer", "minimum": 1}}, extra=False),
                "schedules": {
                    "type": "array",
                    "items": obj(["cron"], {"cron": {"type": "string", "minLength": 1, "maxLength": 256}}),
                },
            },
            extra=False,
        ),
        "Deleted": obj(["status"], {"status": {"const": "ok"}, "success": {"type": "boolean"}}),
        "Version": obj(
            ["id", "class_name", "created_on", "modified_on", "workflow_id", "has_dag", "language"], version_props
        ),
        "VersionGraph": obj(
            ["id", "class_name", "created_on", "modified_on", "workflow_id", "graph"],
            version_props | {"graph": {"type": ["object", "null"]}},
        ),
        "InstanceCreate": obj(
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
                "instance_retention": obj(
                    [], {"error_retention": DURATION, "success_retention": DURATION}, extra=False
                ),
                "location_hint": {
                    "type": "string",
                    "enum": ["wnam", "weur", "enam", "eeur", "apac", "apac-ne", "apac-se", "oc", "sam", "afr", "me"],
                },
            },
            extra=False,
        ),
        "ExplorerInstanceCreate": obj(
            [],
            {
                "id": {"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 100},
                "params": {"description": "any JSON value"},
            },
            extra=False,
        ),
        "InstanceCreated": obj(
            ["id", "status", "version_id", "workflow_id"],
            {
                "id": {"type": "string"},
                "status": STATUS,
                "version_id": {"type": "string"},
                "workflow_id": {"type": "string"},
                "trigger_source": TRIGGER_SOURCE,
            },
        ),
        "InstanceSummary": obj(
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
        "InstanceDetails": obj(
            DETAILS_REQUIRED,
            {
                "status": STATUS,
                "params": {},
                "trigger": obj(["source"], {"source": TRIGGER_SOURCE}),
                "versionId": {"type": "string"},
                "queued": TIME,
                "start": TIME_OR_NULL,
                "end": TIME_OR_NULL,
                "success": {"type": ["boolean", "null"]},
                "error": NAME_MESSAGE_OR_NULL,
                "output": {},
                "steps": {"type": "array", "items": ref("Step"), "description": "left out when simple=true"},
                "step_count": {"type": "integer"},
                "rollback": {"type": ["object", "null"]},
            },
        ),
        "StepResult": obj(
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
                "from": obj(
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
        "ExplorerStatusChange": obj(
            ["action"],
            {"action": {"type": "string", "enum": ["pause", "resume", "terminate", "restart"]}},
            extra=False,
        ),
        "StatusChanged": obj(
            ["status", "timestamp"], {"status": STATUS, "timestamp": TIME, "success": {"type": "boolean"}}
        ),
        "InstanceStatusResult": obj(
            ["status", "output", "error"], {"status": STATUS, "output": {}, "error": NAME_MESSAGE_OR_NULL}
        ),
        "EventObject": obj(
            ["type"],
            {
                "type": {"type": "string", "pattern": ID_PATTERN, "minLength": 1, "maxLength": 100},
                "payload": {"description": "any JSON value"},
            },
            extra=False,
        ),
        "EventSent": obj(
            ["instanceId", "timestamp"],
            {"instanceId": {"type": "string"}, "timestamp": TIME, "success": {"type": "boolean"}},
        ),
        "BatchCreate": {
            "oneOf": [
                obj(
                    ["count"],
                    {
                        "count": {"type": "integer", "minimum": 1, "maximum": 100},
                        "params": {"description": "any JSON value, the params of every instance"},
                        "instance_retention": obj(
                            [], {"error_retention": DURATION, "success_retention": DURATION}, extra=False
                        ),
                        "location_hint": {"type": "string"},
                    },
                    extra=False,
                ),
                obj(
                    ["instances"],
                    {"instances": {"type": "array", "minItems": 1, "maxItems": 100, "items": ref("InstanceCreate")}},
                    extra=False,
                ),
            ]
        },
        "BatchCreated": obj(
            ["created", "errors"],
            {
                "created": {"type": "array", "items": ref("InstanceCreated")},
                "errors": {
                    "type": "array",
                    "items": obj(
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
        "BatchDelete": obj(
            ["instances"],
            {"instances": {"type": "array", "minItems": 1, "maxItems": 100, "items": {"type": "string"}}},
            extra=False,
        ),
        "BatchDeleted": obj(
            ["deleted", "errors"],
            {
                "deleted": {"type": "array", "items": obj(["id"], {"id": {"type": "string"}})},
                "errors": {
                    "type": "array",
                    "items": obj(
                        ["id", "code", "message"],
                        {"id": {"type": "string"}, "code": {"type": "integer"}, "message": {"type": "string"}},
                    ),
                },
            },
        ),
        "TerminateJob": obj(["status"], {"status": {"type": "string", "enum": ["ok", "already_running"]}}),
        "Health": obj(
            ["status"], {"status": {"const": "ok"}, "version": {"type": "string"}, "workflows": {"type": "integer"}}
        ),
        "Membership": obj(["id", "account"], {"id": {"type": "string"}, "account": {"type": "object"}}),
        "Success": {"type": "object", "properties": {"success": {"type": "boolean"}}},
    }
