"""``step.run_workflow``: start a child instance and hibernate until it finishes; its output is the step's result.

The child is created once. Its id is the one given, or one derived from the parent's id, the child workflow's
name and the call's occurrence, the same on every replay; the storage links it to the parent in the transaction
that creates it, and a replay that finds it already there uses it. The parent waits as for an event: the child
reaching a final status (or being deleted) buffers an event of type ``stepstone/child/<child pk>`` for the parent
and makes it runnable, in the child's own transaction (a trigger), so no coroutine and no worker waits for the
child. Each time the parent runs, a pending wait reads the child's record; once the child has finished, its
output (or error) is recorded as this step's result, consuming that event, and served from history after that.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from stepstone import codec
from stepstone.errors import NonRetryableError, WorkflowFatalError, WorkflowTimeoutError
from stepstone.limits import validate_instance_id
from stepstone.models import CHILD_EVENT, FINISHED, InstanceRecord, StepRecord, step_key
from stepstone.run_state import Abort, ChildHost, RunState, WakeReason

CHILD_ERROR = "ChildWorkflowError"
"""The error name a child that was terminated or deleted gives its parent."""


def child_id(state: RunState, workflow: str, count: int) -> str:
    """The child's id when none is given: ``<parent id>-<workflow>-<n>``, or a digest of it when that is too
    long or not a valid id."""
    candidate = f"{state.instance_id}-{workflow}-{count}"
    try:
        return validate_instance_id(candidate, state.limits)
    except Exception:
        digest = hashlib.sha256(f"{state.workflow}\x1f{candidate}".encode()).hexdigest()[:40]
        return f"child-{digest}"


def _child_error(workflow: str, child: InstanceRecord | None, instance_id: str) -> tuple[str, str]:
    where = f'child instance "{instance_id}" of workflow "{workflow}"'
    if child is None:
        return CHILD_ERROR, f"{where} was deleted before it finished"
    if child.status == "terminated":
        return CHILD_ERROR, f"{where} was terminated"
    return child.error_name or "Error", f"{where} errored: {child.error_message or ''}"


def _settled(rec: StepRecord) -> Any:
    if rec.status == "success":
        return codec.decode(rec.result or "null")
    if rec.status == "timeout":
        raise WorkflowTimeoutError(rec.error_message or "Execution timed out")
    raise NonRetryableError(rec.error_message or "", rec.error_name or CHILD_ERROR)


async def run_child(
    state: RunState,
    name: str,
    count: int,
    *,
    workflow: str,
    params: Any,
    instance_id: str | None,
    timeout_ms: float | None,
    terminate_with_parent: bool,
) -> Any:
    """Run one ``run_workflow`` occurrence to the child's output (or its error as a NonRetryableError)."""
    key = step_key("wait", name, count)
    rec = state.history.get(key)
    if rec is not None and rec.status in ("success", "error", "timeout"):
        return _settled(rec)
    host = state.children
    if host is None:
        raise WorkflowFatalError(f'step.run_workflow("{workflow}"): this run has no engine to start the child')
    await state.gate()  # no new child while a pause drains
    # Counted as in flight, so an instance that hibernates meanwhile (a sibling in asyncio.gather) waits for this
    # child to be created and its wake-up registered before it releases the instance.
    state.enter()
    try:
        return await _run(
            state, host, rec, key, name, count, workflow, params, instance_id, timeout_ms, terminate_with_parent
        )
    finally:
        state.leave()


async def _run(
    state: RunState,
    host: ChildHost,
    rec: StepRecord | None,
    key: str,
    name: str,
    count: int,
    workflow: str,
    params: Any,
    instance_id: str | None,
    timeout_ms: float | None,
    cascade: bool,
) -> Any:
    now = state.clock.now()
    new = rec is None
    if rec is None:
        target = instance_id if instance_id is not None else child_id(state, workflow, count)
        child = await host.start_child(
            state.account,
            workflow,
            target,
            params,
            parent_pk=state.lease.pk,
            terminate_with_parent=cascade,
        )
        if state.aborted:
            raise Abort()
        links = await state.storage.instance_links(child.pk)
        if links.parent is None or links.parent.pk != state.lease.pk:
            raise NonRetryableError(
                f'step.run_workflow("{workflow}"): instance "{target}" already exists and was not started by '
                "this instance; give another id",
                "InstanceExistsError",
            )
        rec = StepRecord(
            key,
            "wait",
            name,
            count,
            state.next_seq(),
            "waiting",
            now,
            wake_at=None if timeout_ms is None else now + timeout_ms / 1000,
            config=json.dumps({"child": {"workflow": workflow, "id": child.id}}),
            event_type=f"{CHILD_EVENT}{child.pk}",
        )
        state.history[key] = rec
        found: InstanceRecord | None = child
        target_id = child.id
    else:
        target_id = json.loads(rec.config or "{}").get("child", {}).get("id", "")
        found = await host.get_child(state.account, workflow, target_id)
        if state.aborted:
            raise Abort()
    event_type = rec.event_type or ""
    if found is None or found.status in FINISHED:
        rec.ended_at = now
        if found is not None and found.status == "complete":
            rec.status, rec.result = "success", found.output or "null"
        else:
            rec.status = "error"
            rec.error_name, rec.error_message = _child_error(workflow, found, target_id)
        event = state.take_event(event_type)
        if event is not None:
            await state.consume(rec, event.pk)
        else:
            await state.write(rec)
        return _settled(rec)
    if rec.wake_at is not None and now >= rec.wake_at:
        rec.status, rec.ended_at = "timeout", now
        rec.error_name = "WorkflowTimeoutError"
        rec.error_message = f'child instance "{target_id}" of workflow "{workflow}" did not finish in time'
        await state.write(rec)
        return _settled(rec)
    if new:  # a pending wait replayed from history is already stored as it is
        await state.write(rec, durable=False)
    raise state.suspend(WakeReason("waitForEvent", f"{name}-{count}", rec.wake_at, event_type))
