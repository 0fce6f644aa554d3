"""Workflows and their versions: ``/client/v4/accounts/{account_id}/workflows[/{name}[/versions...]]``."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from stepstone.cron import CronError, parse_cron
from stepstone.details import iso, version_document, workflow_summary
from stepstone.details import version_graph as graph_document
from stepstone.durations import to_millis
from stepstone.errors import ValidationError
from stepstone.limits import MAX_STEPS
from stepstone.models import VersionRecord, WorkflowRecord
from stepstone.server.body import json_object, only_keys, query_int, read_json
from stepstone.server.envelope import ApiError, bad_request, ok
from stepstone.server.state import Scope, scope_of
from stepstone.text import check_text

MAX_PER_PAGE = 1000
_VERSION_ID = re.compile(r"[A-Za-z0-9-]{1,64}\Z")
VERSION_NOT_FOUND = 10201


def page_info(page: int, per_page: int, count: int, total: int) -> dict[str, Any]:
    """``result_info`` of a page-based list."""
    return {
        "page": page,
        "per_page": per_page,
        "count": count,
        "total_count": total,
        "total_pages": max(1, math.ceil(total / per_page)),
    }


async def workflow_document(scope: Scope, record: WorkflowRecord) -> dict[str, Any]:
    """A workflow as listed, with its instance counts."""
    counts = await scope.account.count_by_status(record.name)
    return workflow_summary(record, counts)


async def list_workflows(request: Request) -> Response:
    """``GET /workflows?page&per_page&search``: the account's workflows."""
    scope = scope_of(request)
    page = query_int(request, "page", 1, low=1, high=1_000_000)
    per_page = query_int(request, "per_page", 50, low=1, high=MAX_PER_PAGE)
    search = request.query_params.get("search", "").lower()
    records = [r for r in await scope.account.list_workflows() if search in r.name.lower()]
    chosen = records[(page - 1) * per_page : page * per_page]
    result = [await workflow_document(scope, r) for r in chosen]
    return ok(result, result_info=page_info(page, per_page, len(result), len(records)))


async def get_workflow(request: Request) -> Response:
    """``GET /workflows/{name}``."""
    scope = scope_of(request)
    record = await scope.workflow_record(request.path_params["workflow_name"])
    return ok(await workflow_document(scope, record))


def _config_from(body: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
    config = dict(old)
    if "limits" in body:
        limits = json_object(body["limits"], "limits")
        only_keys(limits, ("steps",), "limits")
        steps = limits.get("steps")
        if steps is not None:
            if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= MAX_STEPS:
                raise bad_request(f"limits.steps must be an integer from 1 to {MAX_STEPS}, got {steps!r}")
            config["limits"] = {"steps": steps}
    if "default_retention" in body:
        retention = json_object(body["default_retention"], "default_retention")
        only_keys(retention, ("error_retention", "success_retention"), "default_retention")
        parsed: dict[str, float] = {}
        for key, value in retention.items():
            if not isinstance(value, int | float | str) or isinstance(value, bool):
                raise bad_request(f"default_retention.{key} must be milliseconds or a string like '5 minutes'")
            try:
                parsed[key] = to_millis(value, what=f"default_retention.{key}")
            except ValidationError as exc:
                raise bad_request(str(exc)) from None
        config["default_retention"] = parsed
    if "concurrency" in body:
        concurrency = json_object(body["concurrency"], "concurrency")
        only_keys(concurrency, ("limit",), "concurrency")
        limit = concurrency.get("limit")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise bad_request(f"concurrency.limit must be a positive integer, got {limit!r}")
        config["concurrency"] = {"limit": limit} if limit is not None else {}
    if "schedules" in body:
        schedules = body["schedules"]
        if not isinstance(schedules, list):
            raise bad_request('schedules must be an array of {"cron": "<expression>"}')
        crons: list[str] = []
        for index, item in enumerate(schedules):
            cron = json_object(item, "each schedule").get("cron")
            if not isinstance(cron, str) or not cron.strip() or len(cron) > 256:
                raise bad_request(f"schedule cron must be a non-empty string of at most 256 characters, got {cron!r}")
            try:
                parse_cron(cron)
            except CronError as exc:
                raise bad_request(f"schedules[{index}].cron is invalid: {exc}") from None
            crons.append(cron)
        config["schedules"] = crons
    return config


def _text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise bad_request(f"{key} is required: a non-empty string of at most 256 characters, got {value!r}")
    return check_text(value, what=key)


async def put_workflow(request: Request) -> Response:
    """``PUT /workflows/{name}``: create or update the record (a class need not be registered here)."""
    scope = scope_of(request)
    state = scope.state
    name = state.workflow_name(request.path_params["workflow_name"])
    body = json_object(await read_json(request, state.body_cap, state.body_timeout), "the request body")
    only_keys(
        body,
        ("class_name", "script_name", "default_retention", "limits", "schedules", "concurrency"),
        "PUT workflow",
    )
    class_name, script_name = _text(body, "class_name"), _text(body, "script_name")
    old = await scope.account.get_workflow(name)
    old_config = json.loads(old.config or "{}") if old is not None else {}
    config = json.dumps(_config_from(body, old_config if isinstance(old_config, dict) else {}), sort_keys=True)
    record = await scope.account.put_workflow(
        name, class_name=class_name, script_name=script_name, config=config, now=state.engine.clock.now()
    )
    return ok(
        {
            "id": record.name,
            "name": record.name,
            "class_name": record.class_name,
            "script_name": record.script_name,
            "created_on": iso(record.created_on),
            "modified_on": iso(record.modified_on),
            "triggered_on": iso(record.triggered_on),
            "version_id": record.version_id,
            "is_deleted": 0,
            "terminator_running": 1 if scope.terminator_running(name) else 0,
        }
    )


async def delete_workflow(request: Request) -> Response:
    """``DELETE /workflows/{name}``: the workflow and all its instances."""
    scope = scope_of(request)
    record = await scope.workflow_record(request.path_params["workflow_name"])
    await scope.account.delete_workflow(record.name)
    return ok({"status": "ok", "success": True})


async def list_versions(request: Request) -> Response:
    """``GET /workflows/{name}/versions``: newest first (the one that most recently became current)."""
    scope = scope_of(request)
    record = await scope.workflow_record(request.path_params["workflow_name"])
    page = query_int(request, "page", 1, low=1, high=1_000_000)
    per_page = query_int(request, "per_page", 50, low=1, high=MAX_PER_PAGE)
    versions = await scope.account.list_versions(record.name)
    chosen = versions[(page - 1) * per_page : page * per_page]
    result = [version_document(v) for v in chosen]
    return ok(result, result_info=page_info(page, per_page, len(result), len(versions)))


async def _version(request: Request) -> VersionRecord:
    scope = scope_of(request)
    record = await scope.workflow_record(request.path_params["workflow_name"])
    version_id = request.path_params["version_id"]
    # ids are UUIDs: anything else (a NUL, a path of a kilobyte) is no version, without asking the database
    version = await scope.account.get_version(record.name, version_id) if _VERSION_ID.match(version_id) else None
    if version is None:
        raise ApiError(
            404,
            VERSION_NOT_FOUND,
            f"version {version_id[:80]!r} not found in workflow {record.name!r}: "
            f"its current version is {record.version_id!r}",
        )
    return version


async def get_version(request: Request) -> Response:
    """``GET /workflows/{name}/versions/{version_id}``."""
    return ok(version_document(await _version(request)))


async def version_graph(request: Request) -> Response:
    """``GET /workflows/{name}/versions/{version_id}/graph``: the diagram drawn from the version's ``run()``
    (``stepstone.graph``), or ``null`` when its code could not be read."""
    return ok(graph_document(await _version(request)))
