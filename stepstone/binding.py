"""The Workflow binding: Cloudflare's ``create``/``createBatch``/``get`` in Python, and the :class:`Account` handle
that scopes them to one account (the instance handles they return are in :mod:`stepstone.instance`).

Both Cloudflare's dict forms (``create({"id": ..., "params": ...})``, ``send_event({"type": ..., "payload": ...})``)
and Python keyword forms are accepted.

Every binding belongs to one account (the default, ``local``, unless it came from :meth:`Account.workflow`) and
every storage call it makes names that account, so a handle can never reach another account's instances.
"""

from __future__ import annotations

import re
import uuid
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, overload

from stepstone import codec, typed
from stepstone.admission import Admission, admit
from stepstone.clock import Clock
from stepstone.durations import Duration, to_millis
from stepstone.errors import InstanceNotFoundError, ValidationError
from stepstone.instance import WorkflowInstance
from stepstone.limits import (
    AccountLimits,
    Limits,
    check_size,
    validate_batch_size,
    validate_instance_id,
)
from stepstone.models import (
    DEFAULT_ACCOUNT,
    InstanceRecord,
    NewInstance,
    TriggerSource,
    VersionRecord,
    WorkflowRecord,
)
from stepstone.observe import Observer
from stepstone.observe.tracing import current_traceparent, valid_traceparent
from stepstone.storage.base import InstancePage, Storage
from stepstone.text import check_text


class Notify(Protocol):
    """How a binding tells the local worker of a change: ``(pk, kind)``; an ``abort`` with ``generation`` stops
    only a run older than it (a restart's or a rolling-back terminate's own new run must go on)."""

    def __call__(self, pk: int, kind: str, generation: int | None = None) -> None: ...


@dataclass(slots=True)
class Runtime:
    """What a binding needs from its engine."""

    storage: Storage
    clock: Clock
    limits_for: Callable[[str], Limits]
    ensure_workflow: Callable[[str, str], Awaitable[str]]
    """Makes sure the workflow ``(account, name)`` is in the database; returns its version id."""
    notify: Notify
    """Tells the local worker about a change: ``new``, ``pause``, ``resume`` or ``abort``."""
    observer: Observer | None = None
    """Told of the instances created here."""
    params_type_for: Callable[[str], object | None] = lambda name: None
    """The params type the workflow ``name``'s class declares (``WorkflowEntrypoint[T]``), if it is registered here."""
    account_limits: AccountLimits = field(default_factory=AccountLimits)
    """The creation rate every account is held to (its concurrency is the worker's)."""
    admission: Admission = field(default_factory=Admission)
    """This process's creation-rate buckets and queued-instance counts."""


RETENTION_KEYS: Final = ("success_retention", "error_retention", "successRetention", "errorRetention")
ALREADY_EXISTS: Final = (10405, "workflows.api.error.instance.already_exists")
DUPLICATE_IN_BATCH: Final = (10415, "workflows.api.error.instance.duplicate_in_batch")
"""Cloudflare's per-entry ``createBatch`` errors: (code, message), as its local binding reports them."""


def _batch_error(index: int, instance_id: str, error: tuple[int, str]) -> dict[str, Any]:
    return {"index": index, "id": instance_id, "code": error[0], "message": error[1]}


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What the object form of ``create_batch`` returns: ``created`` (handles, in input order) and ``errors``
    (``{"index", "id", "code", "message"}`` for each entry not created). ``result["created"]`` works too."""

    created: list[WorkflowInstance]
    errors: list[dict[str, Any]]

    def __getitem__(self, key: str) -> Any:
        if key not in ("created", "errors"):
            raise KeyError(key)
        return getattr(self, key)


def _retention_ms(value: Mapping[str, object] | None, key: str) -> float | None:
    if value is None:
        return None
    raw = value.get(key, value.get(key.replace("_retention", "Retention")))
    if raw is None:
        return None
    if not isinstance(raw, int | float | str):
        raise ValidationError(f"retention {key}: expected a duration, got {type(raw).__name__}")
    return to_millis(raw, what=f"retention {key}")


def _join(prefix: str, field: str) -> str:
    """A field path under ``prefix``: ``params`` + ``email`` is ``params.email``, + ``[0]`` is ``params[0]``."""
    if field == "(value)":
        return prefix
    return prefix + field if field.startswith("[") else f"{prefix}.{field}"


def _traceparent(given: str | None) -> str | None:
    if given is None:
        return current_traceparent()
    if not valid_traceparent(given):
        raise ValidationError(
            f"traceparent {given[:80]!r} is not a W3C traceparent (00-<32 hex trace id>-<16 hex span id>-<2 hex flags>)"
        )
    return given


_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def validate_account_id(account: object) -> str:
    """An account id: 1-64 letters, digits, ``_`` or ``-`` (Cloudflare's are 32 hexadecimal digits)."""
    if not isinstance(account, str) or not _ACCOUNT_ID.fullmatch(account):
        shown = account[:80] if isinstance(account, str) else account
        raise ValidationError(f"account id {shown!r} is invalid: expected 1-64 letters, digits, '_' or '-'")
    return account


class Account:
    """One account's workflows: what a token scoped to it may reach, and nothing else.

    ``engine.account("acme")`` gives it; :meth:`workflow` gives bindings whose instances are that account's. The
    engine's own :meth:`~stepstone.Engine.workflow` is the default account's (``local``).
    """

    def __init__(self, runtime: Runtime, account_id: str) -> None:
        self._rt = runtime
        self.id = validate_account_id(account_id)
        self._bindings: dict[str, Workflow] = {}

    def __repr__(self) -> str:
        return f"Account({self.id!r})"

    def workflow(self, name: str) -> Workflow:
        """The binding of this account's workflow ``name`` (which need not exist yet)."""
        wf = self._bindings.get(name)
        if wf is None:
            wf = self._bindings[name] = Workflow(self._rt, name, account=self.id)
        return wf

    async def list_workflows(self) -> list[WorkflowRecord]:
        """This account's workflows, oldest first."""
        return await self._rt.storage.list_workflows(self.id)

    async def get_workflow(self, name: str) -> WorkflowRecord | None:
        """This account's workflow ``name``, or None."""
        return await self._rt.storage.get_workflow(self.id, name)

    async def put_workflow(
        self, name: str, *, class_name: str, script_name: str, config: str, now: float
    ) -> WorkflowRecord:
        """Create or update this account's workflow ``name`` (a new version when the class or config changes)."""
        old = await self._rt.storage.get_workflow(self.id, name)
        version = str(uuid.uuid4())
        if old is not None and (old.class_name, old.script_name, old.config) == (class_name, script_name, config):
            version = old.version_id
        record = WorkflowRecord(name, class_name, script_name, version, now, now, None, config, self.id)
        return await self._rt.storage.put_workflow(record)

    async def list_versions(self, name: str) -> list[VersionRecord]:
        """The versions of this account's workflow ``name``, the current one first."""
        return await self._rt.storage.list_versions(self.id, name)

    async def get_version(self, name: str, version_id: str) -> VersionRecord | None:
        """One version of this account's workflow ``name``, or None."""
        return await self._rt.storage.get_version(self.id, name, version_id)

    async def delete_workflow(self, name: str) -> bool:
        """Delete this account's workflow ``name`` and all its instances; False if it did not exist."""
        return await self._rt.storage.delete_workflow(self.id, name)

    async def count_by_status(self, name: str) -> dict[str, int]:
        """How many instances of this account's workflow ``name`` are in each status."""
        return await self._rt.storage.count_by_status(self.id, name)


class Workflow:
    """A workflow binding: create instances and get handles to them."""

    def __init__(self, runtime: Runtime, name: str, *, account: str = DEFAULT_ACCOUNT) -> None:
        self._rt = runtime
        self.name = check_text(name, what="workflow name")
        self.account = account
        """The account whose workflow this is; its instances are that account's."""

    def __repr__(self) -> str:
        if self.account != DEFAULT_ACCOUNT:
            return f"Workflow({self.name!r}, account={self.account!r})"
        return f"Workflow({self.name!r})"

    @property
    def limits(self) -> Limits:
        """The limits that apply to this workflow."""
        return self._rt.limits_for(self.name)

    def sibling(self, name: str) -> Workflow:
        """The binding of workflow ``name`` in this one's account (a child instance's workflow)."""
        return Workflow(self._rt, name, account=self.account)

    async def _admit(self, n: int) -> None:
        """Check that ``n`` more instances may be created now and count them (:func:`stepstone.admission.admit`)."""
        rt = self._rt
        await admit(
            rt.admission, rt.storage, self.limits, rt.account_limits, self.account, self.name, n, rt.clock.now()
        )

    def _new(
        self,
        options: object,
        *,
        version: str,
        now: float,
        trigger: TriggerSource,
        traceparent: str | None = None,
    ) -> NewInstance:
        limits = self.limits
        if not isinstance(options, Mapping):
            raise ValidationError(f"instance options must be a dict, got {type(options).__name__}")
        unknown = set(options) - {"id", "params", "retention", "locationHint", "location_hint", "schedule"}
        if unknown:
            raise ValidationError(f"unknown instance option(s) {sorted(unknown)}: expected id, params, retention")
        raw_id = options.get("id")
        instance_id = str(uuid.uuid4()) if raw_id is None else validate_instance_id(raw_id, limits)
        given = options.get("params", {})
        declared = self._rt.params_type_for(self.name)
        if declared is not None:
            # Stored in its plain form, as the type built it (defaults filled in), so every run rebuilds the same.
            try:
                built = typed.convert(declared, given, what=f"params of instance {instance_id!r}")
            except ValidationError as exc:
                fields = [{**e, "field": _join("params", e["field"])} for e in exc.errors]
                raise ValidationError(str(exc), errors=fields) from None
            given = typed.to_plain(built)
        else:
            given = typed.to_plain(given) if typed.is_typed(type(given)) else given
        params = codec.encode(given, what=f"params of instance {instance_id!r}")
        check_size(len(params.encode()), limits.payload_bytes, what=f"params of instance {instance_id!r}")
        retention = options.get("retention")
        if retention is not None and not isinstance(retention, Mapping):
            raise ValidationError("retention must be a dict with success_retention / error_retention")
        unknown_retention = sorted(set(retention or {}) - set(RETENTION_KEYS))
        if unknown_retention:
            raise ValidationError(
                f"unknown retention option(s) {unknown_retention}: expected successRetention, errorRetention "
                "(or success_retention, error_retention)"
            )
        schedule = options.get("schedule")
        return NewInstance(
            workflow=self.name,
            id=instance_id,
            params=params,
            created_on=now,
            trigger_source=trigger,
            version_id=version,
            schedule=codec.encode(schedule, what="schedule") if schedule is not None else None,
            success_retention_ms=_retention_ms(retention, "success_retention"),
            error_retention_ms=_retention_ms(retention, "error_retention"),
            traceparent=traceparent,
            account=self.account,
        )

    async def create(
        self,
        id: str | Mapping[str, Any] | None = None,
        params: Any = None,
        *,
        retention: Mapping[str, Duration] | None = None,
        trigger: TriggerSource = "binding",
        schedule: Mapping[str, Any] | None = None,
        traceparent: str | None = None,
    ) -> WorkflowInstance:
        """Create an instance; it starts asynchronously. An id in use raises InstanceExistsError.

        ``traceparent`` (W3C Trace Context) is stored with the instance so its runs' spans join that trace;
        by default, the OpenTelemetry span current here, if any.
        """
        if isinstance(id, Mapping):
            options: dict[str, Any] = dict(id)
        else:
            options = {"id": id, "params": {} if params is None else params}
            if retention is not None:
                options["retention"] = retention
            if schedule is not None:
                options["schedule"] = schedule
        version = await self._rt.ensure_workflow(self.account, self.name)
        parent = _traceparent(traceparent)
        new = self._new(options, version=version, now=self._rt.clock.now(), trigger=trigger, traceparent=parent)
        await self._admit(1)
        (record,) = await self._rt.storage.create_instances([new], skip_existing=False)
        self._rt.notify(record.pk, "new")
        if self._rt.observer is not None:
            self._rt.observer.instances_created([record], now=new.created_on)
        return WorkflowInstance(self, record.id)

    @overload
    async def create_batch(
        self, batch: Mapping[str, Any], *, trigger: TriggerSource = "binding", traceparent: str | None = None
    ) -> BatchResult: ...

    @overload
    async def create_batch(
        self,
        batch: Sequence[Mapping[str, Any]],
        *,
        trigger: TriggerSource = "binding",
        traceparent: str | None = None,
    ) -> list[WorkflowInstance]: ...

    async def create_batch(
        self,
        batch: Mapping[str, Any] | Sequence[Mapping[str, Any]],
        *,
        trigger: TriggerSource = "binding",
        traceparent: str | None = None,
    ) -> BatchResult | list[WorkflowInstance]:
        """Create 1..100 instances at once (Cloudflare's ``createBatch``, changelog 2026-10-08).

        - ``create_batch({"count": n, "params": ..., "retention": ...})``: ``n`` instances with generated ids
          and the same options;
        - ``create_batch({"instances": [{"id": ..., "params": ...}, ...]})``: one instance per entry.

        Both return a :class:`BatchResult`: ``created`` (the handles, in input order) and ``errors``, one
        ``{"index", "id", "code", "message"}`` per entry not created: an id already in use (code 10405) or
        repeated earlier in the batch (10415). A malformed entry fails the whole call before anything is
        created (ValidationError naming it).

        The array form ``create_batch([{...}, ...])`` still works and returns the list of created handles, ids
        in use skipped and left out, but is deprecated as on Cloudflare (a DeprecationWarning).

        ``traceparent`` as in :meth:`create`, for every instance of the batch."""
        if isinstance(batch, Mapping):
            entries = self._batch_entries(batch)
        elif isinstance(batch, str | bytes) or not isinstance(batch, Sequence):
            raise ValidationError(
                "create_batch expects {'count': n, 'params': ...} or {'instances': [{'id': ..., 'params': ...}]}, "
                f"got {type(batch).__name__}"
            )
        else:
            warnings.warn(
                "create_batch([...]) (the array form) is deprecated, as on Cloudflare: pass "
                "{'instances': [...]} (or {'count': n, 'params': ...}) to get {'created', 'errors'}",
                DeprecationWarning,
                stacklevel=2,
            )
            validate_batch_size(len(batch), self.limits)
            entries = list(batch)
        result = await self._create_entries(entries, trigger=trigger, traceparent=traceparent)
        return result if isinstance(batch, Mapping) else result.created

    def _batch_entries(self, batch: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        """The instance options of an object-form batch, checked (nothing is created on a bad batch)."""
        limits = self.limits
        if "instances" in batch:
            extra = sorted(set(batch) - {"instances"})
            if extra:
                raise ValidationError(
                    f"create_batch: {extra} cannot be given with 'instances' (set them on each instance)"
                )
            instances = batch["instances"]
            if isinstance(instances, Mapping | str | bytes) or not isinstance(instances, Sequence):
                raise ValidationError(
                    f"create_batch instances must be a list of {{'id': ..., 'params': ...}}, "
                    f"got {type(instances).__name__}"
                )
            validate_batch_size(len(instances), limits)
            return list(instances)
        if "count" not in batch:
            raise ValidationError(
                "create_batch expects {'count': n, 'params': ...} or {'instances': [...]}, "
                f"got keys {sorted(batch)}"
            )
        unknown = sorted(set(batch) - {"count", "params", "retention", "locationHint", "location_hint"})
        if unknown:
            raise ValidationError(
                f"create_batch: unknown option(s) {unknown} with 'count': expected params, retention, locationHint"
            )
        count = batch["count"]
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise ValidationError(f"create_batch count must be a positive integer, got {count!r}")
        validate_batch_size(count, limits)
        shared = {k: v for k, v in batch.items() if k != "count"}
        return [shared] * count

    async def _create_entries(
        self, entries: Sequence[object], *, trigger: TriggerSource, traceparent: str | None
    ) -> BatchResult:
        version = await self._rt.ensure_workflow(self.account, self.name)
        now = self._rt.clock.now()
        parent = _traceparent(traceparent)
        rows: list[NewInstance] = []
        for index, options in enumerate(entries):
            try:
                rows.append(self._new(options, version=version, now=now, trigger=trigger, traceparent=parent))
            except ValidationError as exc:
                fields = [{**e, "field": _join(f"instances[{index}]", e["field"])} for e in exc.errors]
                raise type(exc)(f"create_batch instance {index}: {exc}", errors=fields) from None
        await self._admit(len(rows))  # each instance of a batch counts, as on Cloudflare
        errors: list[dict[str, Any]] = []
        first: dict[str, int] = {}
        unique: list[NewInstance] = []
        for index, row in enumerate(rows):
            if row.id in first:
                errors.append(_batch_error(index, row.id, DUPLICATE_IN_BATCH))
                continue
            first[row.id] = index
            unique.append(row)
        records = await self._rt.storage.create_instances(unique, skip_existing=True)
        made = {r.id for r in records}
        errors.extend(_batch_error(first[r.id], r.id, ALREADY_EXISTS) for r in unique if r.id not in made)
        errors.sort(key=lambda e: int(e["index"]))
        if records:
            self._rt.notify(records[0].pk, "new")
            if self._rt.observer is not None:
                self._rt.observer.instances_created(records, now=now)
        return BatchResult([WorkflowInstance(self, r.id) for r in records], errors)

    async def get(self, id: str) -> WorkflowInstance:
        """A handle to an existing instance; raises InstanceNotFoundError."""
        if not isinstance(id, str) or not id:
            raise ValidationError(f"instance id must be a non-empty string, got {id!r}")
        check_text(id, what="instance id")
        record = await self._rt.storage.get_instance(self.account, self.name, id)
        if record is None:
            raise InstanceNotFoundError(f"instance {id!r} not found in workflow {self.name!r}")
        return WorkflowInstance(self, id)

    async def list_instances(
        self,
        *,
        status: str | None = None,
        limit: int = 50,
        offset: int = 0,
        newest_first: bool = True,
        created_after: float | None = None,
        created_before: float | None = None,
    ) -> InstancePage:
        """A page of this workflow's instances."""
        return await self._rt.storage.list_instances(
            self.account,
            self.name,
            status=status,
            limit=limit,
            offset=offset,
            newest_first=newest_first,
            created_after=created_after,
            created_before=created_before,
        )

    async def delete_instances(self, ids: Sequence[str]) -> list[str]:
        """Delete instances (running ones stop); returns the ids that existed."""
        found = await self._rt.storage.delete_instances(self.account, self.name, ids)
        return found


class Children:
    """Starts the child instances of ``step.run_workflow`` for the runs of an engine (its ``ChildHost``)."""

    def __init__(self, runtime: Runtime) -> None:
        self._rt = runtime

    async def start_child(
        self,
        account: str,
        workflow: str,
        instance_id: str,
        params: Any,
        *,
        parent_pk: int,
        terminate_with_parent: bool,
    ) -> InstanceRecord:
        """Create the child linked to its parent unless it exists (then leave it as it is); its record now."""
        wf = Workflow(self._rt, workflow, account=account)
        version = await self._rt.ensure_workflow(account, workflow)
        now = self._rt.clock.now()
        new = wf._new({"id": instance_id, "params": params}, version=version, now=now, trigger="binding")
        new.parent_pk, new.terminate_with_parent = parent_pk, terminate_with_parent
        created = await self._rt.storage.create_instances([new], skip_existing=True)
        if created:
            self._rt.notify(created[0].pk, "new")
            if self._rt.observer is not None:
                self._rt.observer.instances_created(created, now=now)
        record = await self._rt.storage.get_instance(account, workflow, new.id)
        if record is None:
            raise InstanceNotFoundError(f"child instance {new.id!r} of workflow {workflow!r} was deleted at once")
        return record

    async def get_child(self, account: str, workflow: str, instance_id: str) -> InstanceRecord | None:
        """The child's record now, or None."""
        return await self._rt.storage.get_instance(account, workflow, instance_id)
