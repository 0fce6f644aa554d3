"""Instance handles: Cloudflare's ``status``/``pause``/``resume``/``terminate``/``restart``/``sendEvent`` on one
instance, its ``describe`` details and event stream, and the :class:`InstanceStatus` that ``status()`` returns.

A handle comes from its :class:`~stepstone.binding.Workflow` (``create``, ``get``) and makes every storage call in
that workflow's account.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stepstone import codec
from stepstone.codec import BlobRef
from stepstone.details import instance_details, version_details
from stepstone.errors import InstanceNotFoundError, InvalidStateError, ValidationError
from stepstone.limits import (
    check_size,
    validate_event_type,
    validate_step_name,
)
from stepstone.models import (
    FINISHED,
    ROLLBACK_EVENT,
    InstanceRecord,
    LinkedInstance,
    StepRecord,
    StepRef,
)
from stepstone.observe import stream
from stepstone.observe.stream import check_options
from stepstone.step_blobs import ByteStream
from stepstone.text import check_text

if TYPE_CHECKING:
    from stepstone.binding import Workflow


@dataclass(frozen=True, slots=True)
class InstanceError:
    """Why an instance errored: ``name`` and ``message``."""

    name: str
    message: str

    def __getitem__(self, key: str) -> str:
        return {"name": self.name, "message": self.message}[key]

    def __stepstone_stored__(self) -> dict[str, str]:
        """What a step that returns it stores: ``{"name", "message"}``."""
        return {"name": self.name, "message": self.message}


@dataclass(frozen=True, slots=True)
class InstanceStatus:
    """What ``status()`` returns: ``status`` (Cloudflare's strings), ``output`` and ``error``."""

    status: str
    output: Any = None
    error: InstanceError | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in ("status", "output", "error"):
            raise KeyError(key)
        return getattr(self, key)

    def __stepstone_stored__(self) -> dict[str, Any]:
        """What a step that returns it stores: ``{"status", "output", "error"}``."""
        return {"status": self.status, "output": self.output, "error": self.error}


def _linked(instance: LinkedInstance) -> dict[str, Any]:
    return {"workflow": instance.workflow, "id": instance.id, "status": instance.status}


class WorkflowInstance:
    """A handle to one instance."""

    def __init__(self, workflow: Workflow, instance_id: str) -> None:
        self.workflow = workflow
        self.id = check_text(instance_id, what="instance id")
        self._rt = workflow._rt

    def __repr__(self) -> str:
        return f"WorkflowInstance({self.workflow.name!r}, {self.id!r})"

    def __stepstone_stored__(self) -> dict[str, str]:
        """What a step that returns this handle stores, and returns (live and replayed): ``{"id": ...}``, as a
        JavaScript step returning an instance stores its ``id``."""
        return {"id": self.id}

    async def record(self) -> InstanceRecord:
        """The raw instance record; raises InstanceNotFoundError."""
        rec = await self._rt.storage.get_instance(self.workflow.account, self.workflow.name, self.id)
        if rec is None:
            raise InstanceNotFoundError(f"instance {self.id!r} not found in workflow {self.workflow.name!r}")
        return rec

    async def status(self) -> InstanceStatus:
        """The instance's status, output and error."""
        rec = await self.record()
        error = InstanceError(rec.error_name, rec.error_message or "") if rec.error_name is not None else None
        output = codec.decode(rec.output) if rec.output is not None else None
        return InstanceStatus(rec.status, output, error)

    def subscribe(
        self,
        options: Mapping[str, Any] | None = None,
        *,
        filter: Sequence[str] | None = None,
        cursor: int | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """The instance's events (Cloudflare's ``subscribe``): the recorded ones, then live ones, ending after
        the terminal event. ``async for ev in instance.subscribe(filter=[...], cursor=last_event_id)``.

        Args:
            options: Cloudflare's dict form, ``{"filter": [...], "cursor": n}``.
            filter: only these event types (the stream still ends at the terminal event).
            cursor: start after this ``eventId`` (the last one processed).

        Each event is a dict in Cloudflare's shape; see ``docs/observe.md``. Raises ValidationError for a bad
        filter or cursor and InstanceNotFoundError (when iteration starts) for an unknown instance.
        """
        if options is not None:
            unknown = set(options) - {"filter", "cursor"}
            if unknown:
                raise ValidationError(f"subscribe options: unknown key {sorted(unknown)[0]!r} (filter, cursor)")
            filter = options.get("filter", filter)
            cursor = options.get("cursor", cursor)
        check_options(filter, cursor)
        wf = self.workflow
        return stream.subscribe(self._rt.storage, wf.account, wf.name, self.id, filter=filter, cursor=cursor)

    async def pause(self) -> None:
        """Pause: in-flight steps finish, then the instance parks (``waitingForPause`` → ``paused``)."""
        rec = await self._rt.storage.pause(self.workflow.account, self.workflow.name, self.id, now=self._rt.clock.now())
        self._rt.notify(rec.pk, "pause")

    async def resume(self) -> None:
        """Resume a paused instance, shifting its timers by the time it was paused; no-op otherwise."""
        rec = await self._rt.storage.resume(
            self.workflow.account, self.workflow.name, self.id, now=self._rt.clock.now()
        )
        self._rt.notify(rec.pk, "resume")

    async def terminate(self, options: Mapping[str, Any] | None = None, *, rollback: bool = False) -> None:
        """Stop the instance now; raises InvalidStateError if it already finished.

        ``rollback=True`` (or Cloudflare's ``terminate({"rollback": True})``): first run the undo handlers of
        its completed ``with_rollback`` steps, last-in first-out (REST says ``rollingBack`` meanwhile), then
        end it terminated. Its unfinished children started with ``terminate_with_parent``
        (``step.run_workflow``'s default) are terminated too, and theirs (without rollback)."""
        if options is not None:
            unknown = sorted(str(k) for k in options if k != "rollback")
            if unknown:
                raise ValidationError(f"terminate options: unknown key {unknown[0]!r} (expected rollback)")
            rollback = options.get("rollback", rollback)
        if not isinstance(rollback, bool):
            raise ValidationError(f"terminate: rollback must be True or False, got {rollback!r}")
        await self._terminate(rollback=rollback)
        record = await self.record()
        await self._terminate_children(record.pk, depth=0)

    async def _terminate_children(self, pk: int, *, depth: int) -> None:
        if depth > 100:  # a chain this deep is a cycle no API can make; stop rather than loop
            return
        links = await self._rt.storage.instance_links(pk)
        for child in links.children:
            if not child.terminate_with_parent or child.status in FINISHED:
                continue
            handle = WorkflowInstance(self.workflow.sibling(child.workflow), child.id)
            with contextlib.suppress(InvalidStateError, InstanceNotFoundError):  # it finished or went meanwhile
                await handle._terminate()
            await handle._terminate_children(child.pk, depth=depth + 1)

    async def _terminate(self, *, rollback: bool = False) -> None:
        limits = self.workflow.limits
        now = self._rt.clock.now()
        rec = await self._rt.storage.terminate(
            self.workflow.account,
            self.workflow.name,
            self.id,
            now=now,
            retention_ms=limits.error_retention_ms,
            rollback=rollback,
        )
        self._rt.notify(rec.pk, "abort", rec.generation)
        if rec.status != "terminated":
            self._rt.notify(rec.pk, "new")  # a worker replays it to roll it back, then terminates it
        elif self._rt.observer is not None:
            self._rt.observer.instance_terminated(rec, now=now)

    async def restart(self, from_step: Mapping[str, Any] | StepRef | None = None) -> None:
        """Run again from the start, or ``from_step={"name", "count", "type"}`` keeping earlier steps."""
        ref: StepRef | None
        if from_step is None or isinstance(from_step, StepRef):
            ref = from_step
        else:
            if "from" in from_step and isinstance(from_step["from"], Mapping):
                from_step = from_step["from"]
            name = from_step.get("name")
            count = from_step.get("count", 1)
            kind = from_step.get("type", "do")
            if not isinstance(name, str):
                raise ValidationError(f"restart from_step needs a step name, got {name!r}")
            validate_step_name(name, self.workflow.limits, what="restart from.name")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise ValidationError(f"restart from_step count must be a positive integer, got {count!r}")
            if kind not in ("do", "sleep", "waitForEvent"):
                raise ValidationError(f"restart from_step type must be do, sleep or waitForEvent, got {kind!r}")
            ref = StepRef(name, count, kind)
        await self.workflow._admit(1)  # a restart counts toward the creation rate, as on Cloudflare
        rec = await self._rt.storage.restart(
            self.workflow.account, self.workflow.name, self.id, now=self._rt.clock.now(), from_step=ref
        )
        # Only runs of the previous generation stop: a worker may have claimed the new one already.
        self._rt.notify(rec.pk, "abort", rec.generation)
        self._rt.notify(rec.pk, "new")

    async def send_event(self, type: str | Mapping[str, Any] | None = None, payload: Any = None) -> None:
        """Send an event; a ``wait_for_event`` of that type receives it (buffered until then)."""
        if isinstance(type, Mapping):
            payload = type.get("payload")
            type = type.get("type")
        limits = self.workflow.limits
        event_type = validate_event_type(type, limits)
        encoded = codec.encode(payload, what=f"payload of event {event_type!r}")
        check_size(len(encoded.encode()), limits.payload_bytes, what=f"payload of event {event_type!r}")
        await self._rt.storage.send_event(
            self.workflow.account,
            self.workflow.name,
            self.id,
            event_type=event_type,
            payload=encoded,
            now=self._rt.clock.now(),
        )
        self._rt.notify(0, "new")

    async def output_stream(self, ref: BlobRef) -> ByteStream:
        """A reader of one of this instance's streamed step outputs (``GET .../step`` serves it)."""
        rec = await self.record()
        return ByteStream(self._rt.storage.blobs, rec.pk, ref)

    async def history(self) -> list[StepRecord]:
        """The instance's step records (its history), in the order the steps first started."""
        rec = await self.record()
        steps, _ = await self._rt.storage.load_history(rec.pk)
        return steps

    async def describe(self, *, order: str = "asc", simple: bool = False) -> dict[str, Any]:
        """Cloudflare's instance details document: status, params, output, error and every step; plus
        stepstone's ``parent`` and ``children`` (``{"workflow", "id", "status"}``) when it has any."""
        rec = await self.record()
        steps, events = await self._rt.storage.load_history(rec.pk)
        requested = any(e.type == ROLLBACK_EVENT for e in events)
        doc = instance_details(rec, steps, order=order, simple=simple, rollback_requested=requested)
        links = await self._rt.storage.instance_links(rec.pk)
        if links.parent is not None:
            doc["parent"] = _linked(links.parent)
        if links.children:
            doc["children"] = [_linked(c) for c in links.children]
        doc.update(version_details(rec, await self._rt.storage.instance_versions(rec.pk)))
        return doc

    async def delete(self) -> None:
        """Delete the instance and all its state; a running instance stops."""
        rec = await self.record()
        await self._rt.storage.delete_instances(self.workflow.account, self.workflow.name, [self.id])
        self._rt.notify(rec.pk, "abort")
