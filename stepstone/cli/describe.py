"""``workflows instances describe`` as text: the instance, what it waits for, then every step with its attempts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from stepstone.cli.output import (
    distance,
    labelled,
    local_time,
    status_label,
    step_label,
    table,
    trigger_label,
    truncate,
)


def _yes_no(value: object) -> str:
    if value is None:
        return ""
    return "✅ Yes" if value else "❌ No"


def _error(err: object) -> str:
    if isinstance(err, dict):
        return f"{err.get('name', 'Error')}: {err.get('message', '')}"
    return "" if err is None else str(err)


def _traceback(err: object, indent: str) -> str:
    """The traceback kept with an error, indented under it (empty when there is none)."""
    text = err.get("traceback") if isinstance(err, dict) else None
    if not text:
        return ""
    return "\n" + "\n".join(indent + line for line in str(text).rstrip().splitlines())


def _output(value: Any, limit: int) -> str:
    return truncate(json.dumps(value, ensure_ascii=False, default=str), limit)


def last_successful_step(steps: list[dict[str, Any]]) -> str:
    """The last ``step`` that succeeded, or the last ``sleep`` that ended (wrangler's rule)."""
    name = ""
    for s in steps:
        if (s.get("type") == "step" and s.get("success")) or (s.get("type") == "sleep" and s.get("finished")):
            name = str(s.get("name", ""))
    return name


def waiting_for(doc: dict[str, Any]) -> str:
    """What a waiting instance waits for and until when, as one line; empty when it is not waiting."""
    waiting = doc.get("waiting_for")
    if not isinstance(waiting, dict):
        return ""
    kind = waiting.get("kind")
    name = waiting.get("name", "")
    until = waiting.get("until")
    when = f" until {local_time(until)} (in {distance(_now(), until)})" if until else ""
    if kind == "waitForEvent":
        types = ", ".join(f'"{t}"' for t in waiting.get("types") or [])
        return f'👀 event {types} for step "{name}"{when}'
    if kind == "retry":
        return f'🔁 next retry of step "{name}"{when}'
    return f'💤 sleep "{name}"{when}'


def _now() -> str:
    return datetime.now(UTC).isoformat()


def render_step(step: dict[str, Any], *, step_output: bool, limit: int) -> str:
    """One step: labelled values, then its attempts as a table."""
    kind = step.get("type")
    pairs: list[tuple[str, object]] = []
    if kind == "termination":
        pairs.append(("Type", step_label(kind)))
        pairs.append(("Trigger", trigger_label((step.get("trigger") or {}).get("source"))))
        return labelled(pairs, indent="  ")
    pairs += [
        ("Name", step.get("name")),
        ("Type", step_label(kind)),
        ("Start", local_time(step.get("start"))),
        ("End", local_time(step.get("end"))),
        ("Duration", distance(step.get("start"), step.get("end")) if step.get("start") else ""),
    ]
    if kind in ("step", "rollback"):
        success = step.get("success")
        pairs.append(("Success", "▶ Running" if success is None else _yes_no(success)))
        if step.get("retries_at"):
            pairs.append(("Retries At", local_time(step["retries_at"])))
        if step_output and step.get("output") is not None:
            pairs.append(("Output", _output(step["output"], limit)))
    elif kind == "sleep":
        pairs.append(("Finished", _yes_no(step.get("finished"))))
    elif kind == "waitForEvent" and step.get("child"):
        child = step["child"]
        pairs.append(("Child", f"{child.get('workflow')} {child.get('id')}"))
        pairs.append(("Finished", _yes_no(step.get("finished"))))
        if step_output and step.get("output") is not None:
            pairs.append(("Output", _output(step["output"], limit)))
    elif kind == "waitForEvent":
        pairs.append(("Event Type", step.get("event_type") or ""))
        pairs.append(("Finished", _yes_no(step.get("finished"))))
        if step.get("timeout_at") and not step.get("finished"):
            pairs.append(("Times Out At", local_time(step["timeout_at"])))
        if step_output and step.get("output") is not None:
            pairs.append(("Output", _output(step["output"], limit)))
    if step.get("error"):
        pairs.append(("Error", _error(step["error"])))
    text = labelled(pairs, indent="  ") + _traceback(step.get("error"), "    ")
    attempts = step.get("attempts") or []
    if attempts:
        rows = []
        for a in attempts:
            state = "🔄 Working" if a.get("success") is None else "✅ Success" if a.get("success") else "❌ Error"
            rows.append(
                [
                    local_time(a.get("start")),
                    local_time(a.get("end")),
                    distance(a.get("start"), a.get("end")) if a.get("end") else "",
                    state,
                    _error(a.get("error")),
                ]
            )
        text += "\n" + table(["Start", "End", "Duration", "State", "Error"], rows)
    return text


def render_instance(doc: dict[str, Any], name: str, *, step_output: bool = True, limit: int = 5000) -> str:
    """The whole instance: header values, then ``Steps:`` and each step."""
    steps = list(doc.get("steps") or [])
    end = doc.get("end")
    pairs: list[tuple[str, object]] = [
        ("Workflow Name", name),
        ("Instance Id", doc.get("id", "")),
        ("Version Id", doc.get("versionId", "")),
        ("Status", status_label(doc.get("status"))),
        ("Trigger", trigger_label((doc.get("trigger") or {}).get("source"))),
        ("Queued", local_time(doc.get("queued"))),
        ("Success", _yes_no(doc.get("success"))),
        ("Start", local_time(doc.get("start"))),
        ("End", local_time(end)),
        ("Duration", distance(doc.get("start"), end) if doc.get("start") else ""),
        ("Last Successful Step", last_successful_step(steps)),
    ]
    if doc.get("waiting_for"):
        pairs.append(("Waiting For", waiting_for(doc)))
    if doc.get("schedule"):
        schedule = doc["schedule"]
        pairs.append(
            ("Schedule", f"{schedule.get('cron')} at {local_time((schedule.get('scheduled_time') or 0) / 1000)}")
        )
    if doc.get("parent"):
        parent = doc["parent"]
        pairs.append(("Parent", f"{parent.get('workflow')} {parent.get('id')} ({parent.get('status')})"))
    for child in doc.get("children") or []:
        pairs.append(("Child", f"{child.get('workflow')} {child.get('id')} ({child.get('status')})"))
    ran = [v.get("id") for v in doc.get("ran_versions") or []]
    if ran and ran != [doc.get("versionId")]:
        pairs.append(("Ran Versions", ", ".join(str(v) for v in ran)))
    for diverged in doc.get("divergence") or []:
        pairs.append(("Divergence", diverged.get("message", "")))
    if doc.get("error"):
        pairs.append(("Error", _error(doc["error"])))
    rollback = doc.get("rollback")
    if rollback:
        outcome = "✅ Complete" if rollback.get("outcome") == "complete" else "❌ Failed"
        failed = f" ({_error(rollback['error'])})" if rollback.get("error") else ""
        pairs.append(("Rollback", outcome + failed))
    elif doc.get("status") == "rollingBack":
        pairs.append(("Rollback", "▶ Running"))
    if step_output and doc.get("output") is not None:
        pairs.append(("Output", _output(doc["output"], limit)))
    parts = [labelled(pairs) + _traceback(doc.get("error"), "  ")]
    if steps:
        parts.append("Steps:")
        parts.extend("\n" + render_step(s, step_output=step_output, limit=limit) for s in steps)
    return "\n".join(parts)
