"""The records that cross the storage boundary.

Only these dataclasses (and plain values) pass between the engine and a storage backend. Stored values
(params, results, payloads, outputs) stay in their encoded text form here; see :mod:`stepstone.codec`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final, Literal

Status = Literal["queued", "running", "waiting", "waitingForPause", "paused", "complete", "errored", "terminated"]
STATUSES: Final[tuple[Status, ...]] = (
    "queued",
    "running",
    "waiting",
    "waitingForPause",
    "paused",
    "complete",
    "errored",
    "terminated",
)
FINISHED: Final[frozenset[str]] = frozenset({"complete", "errored", "terminated"})

CHILD_EVENT: Final = "stepstone/child/"
"""The type of the event that tells a parent its child finished (``step.run_workflow``): this prefix and the
child's pk. No event a user sends can have it (a ``/`` is not allowed in an event type)."""

ROLLBACK_EVENT: Final = "stepstone/rollback"
"""The type of the event ``terminate(rollback=True)`` leaves for the run that rolls the instance back before it
ends terminated; consumed when it ends. No event a user sends can have it (a ``/`` is not allowed)."""

DEFAULT_ACCOUNT: Final = "local"
"""The account of everything made without naming one: the Python API, the CLI, ``stepstone dev``'s project
workflows, the explorer API, and every row a database held before accounts partitioned it."""

StepKind = Literal["do", "sleep", "wait", "rollback"]
"""``rollback``: an undo handler of a ``step.with_rollback`` step, keyed by that step's name and count."""
StepStatus = Literal["running", "retrying", "waiting", "success", "error", "timeout"]
TriggerSource = Literal["api", "binding", "event", "cron", "unknown"]


@dataclass(slots=True)
class WorkflowRecord:
    """A registered workflow."""

    name: str
    class_name: str
    script_name: str
    version_id: str
    created_on: float
    modified_on: float
    triggered_on: float | None = None
    config: str = "{}"
    """JSON of per-workflow settings (limits, retention, schedules)."""
    account: str = DEFAULT_ACCOUNT
    """The account the workflow belongs to: ``(account, name)`` is its key."""


@dataclass(slots=True)
class VersionRecord:
    """One version of a workflow: what its code and settings were when it was registered under that id."""

    account: str
    workflow: str
    id: str
    class_name: str
    created_on: float
    """When this version was first registered."""
    modified_on: float
    """When it last became the workflow's current version (a revert to earlier code makes it current again)."""
    config: str = "{}"
    """JSON of the settings it was registered with (limits, retention, concurrency)."""
    graph: str | None = None
    """JSON of its diagram (``stepstone.graph``), or None when its code was not available to draw."""


@dataclass(slots=True)
class InstanceVersion:
    """A version that ran an instance other than the one that created it, or one whose replay diverged."""

    version_id: str
    first_ran_on: float
    last_ran_on: float
    divergence: str | None = None
    """JSON of how this version's replay left the recorded history (``stepstone.divergence``), or None."""


@dataclass(slots=True)
class NewInstance:
    """An instance to create."""

    workflow: str
    id: str
    params: str
    created_on: float
    trigger_source: TriggerSource = "api"
    version_id: str = ""
    schedule: str | None = None
    success_retention_ms: float | None = None
    error_retention_ms: float | None = None
    traceparent: str | None = None
    """The W3C ``traceparent`` of the caller (OpenTelemetry): the instance's spans join that trace."""
    account: str = DEFAULT_ACCOUNT
    """The account of the instance's workflow."""
    parent_pk: int | None = None
    """The instance that started this one with ``step.run_workflow`` (linked in the same transaction)."""
    terminate_with_parent: bool = False
    """Whether terminating that parent terminates this child."""


@dataclass(slots=True)
class LinkedInstance:
    """An instance's parent or one of its children (``step.run_workflow``)."""

    pk: int
    workflow: str
    id: str
    status: Status
    terminate_with_parent: bool


@dataclass(slots=True)
class InstanceLinks:
    """The instance that started an instance, and the instances it started, oldest first."""

    parent: LinkedInstance | None = None
    children: list[LinkedInstance] = field(default_factory=list)


@dataclass(slots=True)
class InstanceRecord:
    """One instance row."""

    pk: int
    workflow: str
    id: str
    status: Status
    params: str
    created_on: float
    modified_on: float
    output: str | None = None
    error_name: str | None = None
    error_message: str | None = None
    started_on: float | None = None
    ended_on: float | None = None
    runnable_at: float | None = None
    waiting_for: str | None = None
    """JSON describing what a waiting instance waits for: ``{"kind", "name", "until", "types"}``."""
    paused_at: float | None = None
    generation: int = 0
    lease_owner: str | None = None
    lease_token: str | None = None
    lease_expires_at: float | None = None
    trigger_source: TriggerSource = "api"
    version_id: str = ""
    schedule: str | None = None
    success_retention_ms: float | None = None
    error_retention_ms: float | None = None
    expires_at: float | None = None
    terminated_at: float | None = None
    traceparent: str | None = None
    """The W3C ``traceparent`` given at creation, if any."""
    account: str = DEFAULT_ACCOUNT
    """The account of the instance's workflow: ``(account, workflow, id)`` is its key."""
    error_traceback: str | None = None
    """The Python traceback an errored instance finished with (user frames first, capped), if any."""


@dataclass(slots=True)
class Attempt:
    """One attempt of a ``step.do``."""

    start: float
    end: float | None = None
    success: bool | None = None
    error_name: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    """The Python traceback of a failed attempt (user frames first, engine frames trimmed, capped)."""


class StepRecord:
    """One step of an instance's history, keyed by kind, name and occurrence count.

    ``attempts`` is decoded from its stored JSON (``attempts_json``) when first read: a replay serves a settled
    step without reading its attempts, so loading a long history decodes none of them. Reading, assigning or
    appending to ``attempts`` works as on a plain list attribute.
    """

    __slots__ = (
        "_attempts",
        "_attempts_json",
        "config",
        "count",
        "ended_at",
        "error_message",
        "error_name",
        "event_type",
        "key",
        "kind",
        "name",
        "result",
        "seq",
        "started_at",
        "status",
        "wake_at",
    )

    def __init__(
        self,
        key: str,
        kind: StepKind,
        name: str,
        count: int,
        seq: int,
        status: StepStatus,
        started_at: float,
        ended_at: float | None = None,
        wake_at: float | None = None,
        result: str | None = None,
        error_name: str | None = None,
        error_message: str | None = None,
        config: str | None = None,
        attempts: list[Attempt] | None = None,
        event_type: str | None = None,
        *,
        attempts_json: str | None = None,
    ) -> None:
        self.key = key
        self.kind: StepKind = kind
        self.name = name
        self.count = count
        self.seq = seq
        self.status: StepStatus = status
        self.started_at = started_at
        self.ended_at = ended_at
        self.wake_at = wake_at  # sleep end, next retry, or event-wait deadline
        self.result = result
        self.error_name = error_name
        self.error_message = error_message
        self.config = config
        self.event_type = event_type
        self._attempts: list[Attempt] | None
        self._attempts_json: str | None
        if attempts is None and attempts_json:
            self._attempts, self._attempts_json = None, attempts_json
        else:
            self._attempts, self._attempts_json = ([] if attempts is None else attempts), None

    @property
    def attempts(self) -> list[Attempt]:
        """The step's attempts, in order (decoded from the stored JSON on first read)."""
        attempts = self._attempts
        if attempts is None:
            raw = self._attempts_json
            attempts = [Attempt(*a) for a in json.loads(raw)] if raw else []
            self._attempts, self._attempts_json = attempts, None
        return attempts

    @attempts.setter
    def attempts(self, value: list[Attempt]) -> None:
        self._attempts, self._attempts_json = value, None

    def _fields(self) -> tuple[object, ...]:
        return (
            self.key,
            self.kind,
            self.name,
            self.count,
            self.seq,
            self.status,
            self.started_at,
            self.ended_at,
            self.wake_at,
            self.result,
            self.error_name,
            self.error_message,
            self.config,
            self.attempts,
            self.event_type,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepRecord):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it replaces

    def __repr__(self) -> str:
        shown = ", ".join(f"{n}={v!r}" for n, v in zip(_FIELD_NAMES, self._fields(), strict=True))
        return f"StepRecord({shown})"


_FIELD_NAMES: Final = (
    "key",
    "kind",
    "name",
    "count",
    "seq",
    "status",
    "started_at",
    "ended_at",
    "wake_at",
    "result",
    "error_name",
    "error_message",
    "config",
    "attempts",
    "event_type",
)


@dataclass(slots=True)
class EventRecord:
    """An event sent to an instance."""

    pk: int
    type: str
    payload: str
    received_at: float
    consumed_by: str | None = None


NewEvent = tuple[str, float, str | None, int | None, str | None, int | None]
"""An instance event row a step write adds: ``(type, at, step_key, attempt, detail JSON, since)``; a ``step.do``
write's row packs all its events, from mark ``since`` to mark ``attempt`` (see :mod:`stepstone.history`)."""


@dataclass(slots=True)
class HistoryEvent:
    """One recorded instance event, joined with the step it is about (if any) as that step is stored now."""

    event_id: int
    type: str
    at: float
    step_key: str | None = None
    attempt: int | None = None
    detail: str | None = None
    step_name: str | None = None
    step_count: int | None = None
    step_result: str | None = None
    step_config: str | None = None
    step_event_type: str | None = None


@dataclass(frozen=True, slots=True)
class Lease:
    """The right to run one instance: every write made for the run carries it (fencing)."""

    pk: int
    token: str
    generation: int


@dataclass(slots=True)
class Claim:
    """An instance a worker claimed, with the lease it must present."""

    instance: InstanceRecord
    lease: Lease


@dataclass(slots=True)
class LeaseState:
    """What a lease renewal learned about an instance this worker runs."""

    held: bool
    status: Status | None


@dataclass(frozen=True, slots=True)
class StepRef:
    """A step named in a restart: ``{"name", "count", "type"}``."""

    name: str
    count: int = 1
    type: Literal["do", "sleep", "waitForEvent"] = "do"

    @property
    def kind(self) -> StepKind:
        """The stored step kind for this Cloudflare step type."""
        return "wait" if self.type == "waitForEvent" else self.type


def step_key(kind: StepKind, name: str, count: int, extra: str = "") -> str:
    """The cache key of a step: kind, name (plus the sleep's target), and occurrence count."""
    return f"{kind}\x1f{name}{extra}\x1f{count}"
