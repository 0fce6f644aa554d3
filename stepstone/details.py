"""Instances and their steps as Cloudflare's REST documents (spec §14), shared by the CLI, the server and
the dashboard. Timestamps are ISO-8601 UTC strings with milliseconds and a ``Z``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from stepstone import codec
from stepstone.codec import REDACTED, BlobRef, plain
from stepstone.models import InstanceRecord, InstanceVersion, StepRecord, VersionRecord, WorkflowRecord


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ``2026-11-25T09:24:32.123Z`` (None stays None)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _error(name: str | None, message: str | None, traceback: str | None = None) -> dict[str, str] | None:
    """Cloudflare's ``{name, message}``, plus stepstone's ``traceback`` when one was kept (clients ignore it)."""
    if name is None:
        return None
    error = {"name": name, "message": message or ""}
    if traceback:
        error["traceback"] = traceback
    return error


def _decode(text: str | None) -> Any:
    return None if text is None else plain(codec.decode(text))


def instance_summary(rec: InstanceRecord) -> dict[str, Any]:
    """An instance as a list item (``GET .../instances``)."""
    return {
        "id": rec.id,
        "status": rec.status,
        "created_on": iso(rec.created_on),
        "modified_on": iso(rec.modified_on),
        "started_on": iso(rec.started_on),
        "ended_on": iso(rec.ended_on),
        "version_id": rec.version_id,
        "workflow_id": rec.workflow,
        "trigger_source": rec.trigger_source,
    }


def workflow_summary(rec: WorkflowRecord, counts: dict[str, int]) -> dict[str, Any]:
    """A workflow as Cloudflare lists it, with instance counts per status."""
    statuses = [
        "complete",
        "errored",
        "paused",
        "queued",
        "rollingBack",
        "running",
        "terminated",
        "waiting",
        "waitingForPause",
    ]
    return {
        "id": rec.name,
        "name": rec.name,
        "class_name": rec.class_name,
        "script_name": rec.script_name,
        "created_on": iso(rec.created_on),
        "modified_on": iso(rec.modified_on),
        "triggered_on": iso(rec.triggered_on),
        "version_id": rec.version_id,
        "instances": {s: counts.get(s, 0) for s in statuses},
    }


def step_entry(step: StepRecord) -> dict[str, Any]:
    """One step of the instance details document."""
    name = f"{step.name}-{step.count}"
    error = _error(step.error_name, step.error_message)
    if step.kind == "sleep":
        return {
            "name": name,
            "type": "sleep",
            "start": iso(step.started_at),
            "end": iso(step.ended_at if step.ended_at is not None else step.wake_at),
            "finished": step.status == "success",
            "error": error,
        }
    if step.kind == "wait":
        return {
            "name": name,
            "type": "waitForEvent",
            "start": iso(step.started_at),
            "end": iso(step.ended_at),
            "finished": step.status in ("success", "timeout", "error"),
            "timeout_at": iso(step.wake_at) if step.status == "waiting" else None,
            "error": error,
            "output": _decode(step.result) if step.status == "success" else None,
            "event_type": step.event_type,
            **_child(step),
        }
    config = json.loads(step.config) if step.config else {}
    sensitive = config.get("sensitive") == "output"
    output = None
    if step.status == "success":
        output = REDACTED if sensitive else _decode(step.result)
    return {
        "name": name,
        "type": "rollback" if step.kind == "rollback" else "step",
        "start": iso(step.started_at),
        "end": iso(step.ended_at),
        "success": True if step.status == "success" else False if step.status == "error" else None,
        "attempts": [
            {
                "start": iso(a.start),
                "end": iso(a.end),
                "success": a.success,
                "error": _error(a.error_name, a.error_message, a.traceback),
            }
            for a in step.attempts
        ],
        "config": config,
        "output": output,
        "retries_at": iso(step.wake_at) if step.status == "retrying" else None,
        "error": _step_error(step) if step.status == "error" else None,
    }


def _child(step: StepRecord) -> dict[str, Any]:
    """A ``run_workflow`` wait's child, ``{"child": {"workflow", "id"}}`` (stepstone's field), else nothing."""
    if not step.config:
        return {}
    child = json.loads(step.config).get("child")
    return {"child": child} if isinstance(child, dict) else {}


def _step_error(step: StepRecord) -> dict[str, str] | None:
    """A failed step's error, with the traceback of its last attempt when that attempt failed with it."""
    last = step.attempts[-1] if step.attempts else None
    same = last is not None and (last.error_name, last.error_message) == (step.error_name, step.error_message)
    return _error(step.error_name, step.error_message, last.traceback if same and last else None)


def rollback_outcome(steps: list[StepRecord]) -> dict[str, Any] | None:
    """Cloudflare's instance ``rollback``: ``{"outcome": "complete"|"failed", "error": {name, message}|null}``
    once undo handlers ran and none is still running; None before any ran (or while one runs)."""
    handlers = sorted((s for s in steps if s.kind == "rollback"), key=lambda s: s.seq)
    if not handlers or any(s.status not in ("success", "error") for s in handlers):
        return None
    failed = next((s for s in handlers if s.status == "error"), None)
    if failed is None:
        return {"outcome": "complete", "error": None}
    return {"outcome": "failed", "error": _error(failed.error_name, failed.error_message)}


def rolling_back(rec: InstanceRecord, steps: list[StepRecord], *, requested: bool = False) -> bool:
    """Whether REST shows the instance ``rollingBack``: not finished, and an undo handler is running (or a
    ``terminate(rollback=True)`` is rolling it back, ``requested``)."""
    if rec.status in ("complete", "errored", "terminated"):
        return False
    return requested or any(s.kind == "rollback" and s.status not in ("success", "error") for s in steps)


def _waiting_for(rec: InstanceRecord) -> dict[str, Any] | None:
    """What a waiting instance waits for: ``{"kind", "name", "until" (ISO), "types"}``."""
    if not rec.waiting_for:
        return None
    waiting = dict(json.loads(rec.waiting_for))
    until = waiting.get("until")
    waiting["until"] = iso(until) if isinstance(until, int | float) else None
    return waiting


def instance_details(
    rec: InstanceRecord,
    steps: list[StepRecord],
    *,
    order: str = "asc",
    simple: bool = False,
    rollback_requested: bool = False,
) -> dict[str, Any]:
    """The instance details document (``GET .../instances/{id}``); ``rollback_requested``: a
    ``terminate(rollback=True)`` is rolling the instance back (REST then says ``rollingBack``)."""
    entries = [step_entry(s) for s in sorted(steps, key=lambda s: s.seq)]
    if rec.status == "terminated":
        entries.append({"type": "termination", "trigger": {"source": "api"}, "start": iso(rec.terminated_at)})
    if order == "desc":
        entries.reverse()
    doc: dict[str, Any] = {
        "id": rec.id,
        "workflow": rec.workflow,
        "status": "rollingBack" if rolling_back(rec, steps, requested=rollback_requested) else rec.status,
        "params": _decode(rec.params),
        "trigger": {"source": rec.trigger_source},
        "versionId": rec.version_id,
        "queued": iso(rec.created_on),
        "start": iso(rec.started_on),
        "end": iso(rec.ended_on),
        "success": True if rec.status == "complete" else False if rec.status == "errored" else None,
        "error": _error(rec.error_name, rec.error_message, rec.error_traceback),
        "output": _decode(rec.output),
        "step_count": len(entries),
        "rollback": rollback_outcome(steps),
        "waiting_for": _waiting_for(rec) if rec.status == "waiting" else None,
    }
    if rec.schedule:
        doc["schedule"] = _decode(rec.schedule)
    if not simple:
        doc["steps"] = entries
    return doc


_STEP_STATUS = {
    "running": "running",
    "retrying": "waiting",
    "waiting": "waiting",
    "success": "complete",
    "error": "errored",
    "timeout": "errored",
}


def _find_step(steps: list[StepRecord], name: str, kind: str) -> StepRecord | None:
    base, _, suffix = name.rpartition("-")
    if not base or not suffix.isdigit():
        return None
    stored_kind = {"step": "do", "waitForEvent": "wait"}.get(kind)
    return next((s for s in steps if (s.kind, s.name, s.count) == (stored_kind, base, int(suffix))), None)


def step_blob(steps: list[StepRecord], name: str, *, attempt: int | None = None) -> BlobRef | None:
    """The blob a ``step.do``'s output was streamed into, when :func:`step_result` would show that output
    (the step, or the given attempt, succeeded and its output is not ``sensitive``); else None."""
    step = _find_step(steps, name, "step")
    if step is None or step.status != "success" or not (step.result or "").startswith('{"$blob":'):
        return None
    doc = step_result(steps, name, kind="step", attempt=attempt)
    if doc is None or doc["output"] == REDACTED or doc["status"] != "complete":
        return None
    ref = codec.decode(step.result or "null")
    return ref if isinstance(ref, BlobRef) else None


def step_result(
    steps: list[StepRecord], name: str, *, kind: str = "step", attempt: int | None = None
) -> dict[str, Any] | None:
    """One step's status, error and untruncated output (``GET .../step?name=<name>-<n>&type=&attempt=``).

    Args:
        steps: the instance's steps.
        name: the step's display name with its occurrence suffix, e.g. ``"load-1"``.
        kind: ``"step"`` (a ``step.do``) or ``"waitForEvent"``.
        attempt: a ``step.do`` attempt number (1-based): that attempt's outcome instead of the step's.

    Returns:
        ``{"status", "error", "output"}`` (plus ``event_type`` for a wait), or None when no such step or attempt.
    """
    step = _find_step(steps, name, kind)
    if step is None:
        return None
    config = json.loads(step.config) if step.config else {}
    sensitive = isinstance(config, dict) and config.get("sensitive") == "output"
    status = _STEP_STATUS.get(step.status, "running")
    error = _step_error(step) if step.kind == "do" else _error(step.error_name, step.error_message)
    output = (REDACTED if sensitive else _decode(step.result)) if step.status == "success" else None
    if attempt is not None:
        if step.kind != "do" or not 1 <= attempt <= len(step.attempts):
            return None
        one = step.attempts[attempt - 1]
        status = "running" if one.success is None else "complete" if one.success else "errored"
        error = _error(one.error_name, one.error_message, one.traceback)
        output = output if one.success else None
    doc: dict[str, Any] = {"status": status, "error": error, "output": output}
    if step.kind == "wait":
        doc["event_type"] = step.event_type
    return doc


def version_details(rec: InstanceRecord, ran: list[InstanceVersion]) -> dict[str, Any]:
    """stepstone's fields beside Cloudflare's ``versionId`` (the version that created the instance):
    ``ran_versions``, the versions that ran it (``{"id", "first_ran_on"}``, in that order), and ``divergence``,
    how each version's replay left the recorded history (None when none did)."""
    versions = [{"id": v.version_id, "first_ran_on": iso(v.first_ran_on)} for v in ran]
    if not ran and rec.started_on is not None:  # no other version ran it: the one that created it did
        versions.append({"id": rec.version_id, "first_ran_on": iso(rec.started_on)})
    diverged = [{"version_id": v.version_id, **json.loads(v.divergence)} for v in ran if v.divergence is not None]
    return {"ran_versions": versions, "divergence": diverged or None}


def version_document(record: VersionRecord) -> dict[str, Any]:
    """A version as Cloudflare lists it (``VersionGetResponse``), with the settings it was registered with."""
    try:
        config = json.loads(record.config or "{}")
    except ValueError:
        config = {}
    doc: dict[str, Any] = {
        "id": record.id,
        "class_name": record.class_name,
        "created_on": iso(record.created_on),
        "modified_on": iso(record.modified_on),
        "workflow_id": record.workflow,
        "has_dag": record.graph is not None,
        "language": "python",
    }
    if isinstance(config, dict):
        for key in ("limits", "default_retention", "concurrency"):
            if isinstance(config.get(key), dict):
                doc[key] = config[key]
    return doc


def version_graph(record: VersionRecord) -> dict[str, Any]:
    """``GET …/versions/{id}/graph``: the version with its diagram (``null`` when it has none)."""
    doc = version_document(record)
    graph = json.loads(record.graph) if record.graph else None
    return {k: doc[k] for k in ("id", "class_name", "created_on", "modified_on", "workflow_id")} | {"graph": graph}
