"""Runs one claimed instance from its history to its next suspension or its end."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

from stepstone import codec, typed
from stepstone.clock import Clock
from stepstone.errors import (
    FencedError,
    NonRetryableError,
    SerializationError,
    StepstoneError,
    StorageUnavailableError,
)
from stepstone.limits import Limits, check_size
from stepstone.models import ROLLBACK_EVENT, Claim
from stepstone.run_state import (
    Abort,
    ChildHost,
    GaveUp,
    LeaseWindow,
    RollBack,
    RunHooks,
    RunState,
    Suspend,
    TestHooks,
    current_run,
    retry_unavailable,
)
from stepstone.step import WorkflowStep
from stepstone.step_process import StepProcesses
from stepstone.step_rollback import rollback_all
from stepstone.step_threads import StepThreads
from stepstone.storage.base import Storage
from stepstone.text import error_text
from stepstone.tracebacks import LIMIT as TRACEBACK_LIMIT
from stepstone.tracebacks import format_failure
from stepstone.workflow import WorkflowEntrypoint, WorkflowEvent, params_type

log = logging.getLogger("stepstone.executor")


@dataclass(slots=True)
class WorkflowDef:
    """A workflow registered with an engine: its class, its limits and how to build its ``env``."""

    name: str
    cls: type[WorkflowEntrypoint[Any]]
    limits: Limits
    binding: str | None = None
    env: Callable[[str], Any] = field(default=lambda account: None)
    """The ``env`` of an instance of the given account."""
    children: ChildHost | None = None
    """Starts the child instances of ``step.run_workflow``."""
    isolation: str = "thread"
    """Where its sync steps run: ``thread`` (the worker's step threads) or ``process`` (killable child processes)."""
    on_divergence: str = "record"
    """What a replay that no longer reaches the recorded steps does: ``record`` it, or ``fail`` the instance."""
    version_id: str = ""
    """The version of its code (``stepstone.graph.code_version``); recorded on an instance it runs when that is
    not the version that created the instance."""


class Execution:
    """One execution (replay) of one instance on this worker."""

    def __init__(
        self,
        *,
        storage: Storage,
        clock: Clock,
        definition: WorkflowDef,
        claim: Claim,
        inprocess_wait_s: float = 1.0,
        on_park: Callable[[int], None] | None = None,
        hooks: RunHooks | None = None,
        lease_window: LeaseWindow | None = None,
        test_hooks: TestHooks | None = None,
        threads: StepThreads | None = None,
        processes: StepProcesses | None = None,
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.definition = definition
        self.claim = claim
        self.lease = claim.lease
        self.inprocess_wait_s = inprocess_wait_s
        self.on_park = on_park
        self.hooks = hooks
        self.lease_window = lease_window
        self.threads = threads
        self.processes = processes if definition.isolation == "process" else None
        """Until when the worker knows the lease holds (moved by its renewals); checked before each attempt."""
        self.test_hooks = test_hooks
        self.error: tuple[str, str] | None = None
        """The error name and message this run finished the instance with, if it errored it."""
        self.state: RunState | None = None
        self._pause_early = False
        self._drained = False
        self._run_task: asyncio.Future[Any] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._divergence_noted = False

    # -- signals from the worker ------------------------------------------------------------------------
    def request_pause(self) -> None:
        """Pause: let in-flight attempts finish, then park the instance."""
        if self.state is None:
            self._pause_early = True
            return
        if self.state.pausing:
            return
        self.state.request_pause()
        self._watcher = asyncio.ensure_future(self._watch_drain(self.state))

    def cancel_pause(self) -> None:
        """Resume arrived before the pause drained."""
        self._pause_early = False
        if self.state is not None and self.state.pausing:
            self.state.cancel_pause()

    async def _watch_drain(self, state: RunState) -> None:
        while state.pausing:
            await state.idle.wait()
            if state.pausing and state.inflight == 0:
                self._drained = True
                if self._run_task is not None:
                    self._run_task.cancel()
                return
            await asyncio.sleep(0)

    # -- the run ----------------------------------------------------------------------------------------
    async def execute(self) -> str:
        """Run the instance; returns what became of it (complete, errored, waiting, paused, aborted)."""
        inst = self.claim.instance
        limits = self.definition.limits
        try:
            steps, events = await self.storage.load_history(inst.pk)
        except StorageUnavailableError as exc:
            try:
                steps, events = await retry_unavailable(
                    lambda: self.storage.load_history(inst.pk),
                    exc,
                    window=self.lease_window,
                    what=self._what("history"),
                )
            except GaveUp:
                return "aborted"
        if not await self._note_version(had_history=bool(steps)):
            return "aborted"
        state = RunState(
            storage=self.storage,
            clock=self.clock,
            lease=self.lease,
            limits=limits,
            workflow=inst.workflow,
            instance_id=inst.id,
            history={s.key: s for s in steps},
            events=events,
            inprocess_wait_s=self.inprocess_wait_s,
            on_park=self.on_park,
            hooks=self.hooks,
            lease_window=self.lease_window,
            test_hooks=self.test_hooks,
            threads=self.threads,
            account=inst.account,
            children=self.definition.children,
            processes=self.processes,
            on_divergence=self.definition.on_divergence,
        )
        state.rolling_back = any(e.type == ROLLBACK_EVENT for e in events)
        self.state = state
        current_run.set(state)  # this task (and the run task it starts) belongs to this instance
        try:
            params = codec.decode(inst.params)
            declared = params_type(self.definition.cls)
            if declared is not None:
                params = typed.convert(declared, params, what=f"params of instance {inst.id!r}")
            event = WorkflowEvent(
                payload=params,
                timestamp=datetime.fromtimestamp(inst.created_on, UTC),
                instance_id=inst.id,
                workflow_name=inst.workflow,
                schedule=_decode_dict(inst.schedule),
            )
            entry = self.definition.cls(None, self.definition.env(inst.account))
        except Exception as exc:
            return await self._finish_error(exc)
        step = WorkflowStep(state)
        self._run_task = asyncio.ensure_future(entry.run(event, step))
        if self._pause_early:
            self.request_pause()
        try:
            output = await self._run_task
        except Suspend:
            return await self._suspend(state)
        except Abort:
            return "aborted"
        except RollBack:
            return await self._roll_back(state)
        except asyncio.CancelledError:
            if not self._drained:
                raise
            return await self._guard(lambda: self.storage.pause_drained(self.lease, now=self.clock.now()), "paused")
        except Exception as exc:
            if state.rolling_back:  # terminated with rollback: whatever run() did, the instance ends terminated
                return await self._roll_back(state)
            return await self._finish_error(state.fatal or exc)
        finally:
            if self._watcher is not None:
                self._watcher.cancel()
        # run() may have returned although a step signalled: asyncio.gather(..., return_exceptions=True)
        # hands our BaseException signals back as values. The signal still wins.
        if state.aborted:
            return "aborted"
        if state.fatal is not None:
            return await self._finish_error(state.fatal)
        if state.suspending:
            return await self._suspend(state)
        if state.rolling_back:
            return await self._roll_back(state)
        try:
            encoded = codec.encode(output, what="the workflow's output")
            check_size(len(encoded.encode()), limits.payload_bytes, what="the workflow's output")
        except SerializationError as exc:
            return await self._finish_error(exc, name="WorkflowFatalError")
        return await self._guard(
            lambda: self.storage.finish(
                self.lease,
                now=self.clock.now(),
                status="complete",
                output=encoded,
                error_name=None,
                error_message=None,
                retention_ms=self._retention("success", inst.success_retention_ms),
            ),
            "complete",
        )

    async def _note_version(self, *, had_history: bool) -> bool:
        """Record the version running the instance when another version created it (and, when the instance ran
        before, that the creating version ran it first); False if the lease is gone. The usual case (the
        version that created it runs it) writes nothing."""
        inst = self.claim.instance
        version = self.definition.version_id
        if not version or version == inst.version_id:
            return True
        lease, now = self.lease, self.clock.now()

        async def note() -> None:
            if had_history and inst.started_on is not None:
                await self.storage.record_version_run(lease, inst.version_id, now=inst.started_on)
            await self.storage.record_version_run(lease, version, now=now)

        return await self._guard(note, "noted") == "noted"

    async def _note_divergence(self) -> None:
        """Record how this run's replay diverged (with the version that ran it) before its final write."""
        state = self.state
        report = state.divergence_report() if state is not None else None
        if report is None or self._divergence_noted:
            return
        self._divergence_noted = True
        version = self.definition.version_id or self.claim.instance.version_id
        make = partial(self.storage.record_version_run, self.lease, version, now=report.detected_at)
        try:
            await make(divergence=report.to_json())
        except StorageUnavailableError as exc:
            await retry_unavailable(
                lambda: make(divergence=report.to_json()), exc, window=self.lease_window, what=self._what("divergence")
            )

    async def _suspend(self, state: RunState) -> str:
        await state.idle.wait()
        if state.aborted:
            return "aborted"
        if state.fatal is not None:
            return await self._finish_error(state.fatal)
        wake, waiting_for, types = state.waiting_for()
        outcome: str = await self._guard(
            lambda: self.storage.suspend(
                self.lease, now=self.clock.now(), wake_at=wake, waiting_for=waiting_for, wait_types=types
            ),
            None,
        )
        return outcome

    async def _roll_back(self, state: RunState) -> str:
        """Terminated with ``rollback=True``: run the undo handlers the replay registered (LIFO, durable, the
        first failure stops them), then end the instance terminated. The handlers get a ``NonRetryableError``
        named ``InstanceTerminated``; their outcome is in their records (REST ``rollback``)."""
        await state.idle.wait()
        if state.aborted:
            return "aborted"
        inst = self.claim.instance
        error = NonRetryableError(f'instance "{inst.id}" was terminated with rollback', "InstanceTerminated")
        try:
            await rollback_all(state, error)
        except ExceptionGroup:
            pass  # recorded on the failed handler: the rollback's outcome is "failed"
        except Suspend:
            return await self._suspend(state)  # a handler's retry hibernates; the request stays for the next run
        except Abort:
            return "aborted"
        return await self._guard(
            lambda: self.storage.finish(
                self.lease,
                now=self.clock.now(),
                status="terminated",
                output=None,
                error_name=None,
                error_message=None,
                retention_ms=self._retention("error", inst.error_retention_ms),
            ),
            "terminated",
        )

    async def _finish_error(self, exc: BaseException, *, name: str | None = None) -> str:
        inst = self.claim.instance
        recorded_name, message = error_text(exc)
        recorded_name = name or recorded_name
        if not isinstance(exc, StepstoneError):
            log.debug("instance %s/%s errored: %s: %s", inst.workflow, inst.id, recorded_name, message)
        self.error = (recorded_name, message)
        return await self._guard(
            lambda: self.storage.finish(
                self.lease,
                now=self.clock.now(),
                status="errored",
                output=None,
                error_name=recorded_name,
                error_message=message,
                retention_ms=self._retention("error", inst.error_retention_ms),
                error_traceback=format_failure(exc, limit=2 * TRACEBACK_LIMIT),
            ),
            "errored",
        )

    def _retention(self, kind: str, override: float | None) -> float:
        if override is not None:
            return override
        limits = self.definition.limits
        return limits.success_retention_ms if kind == "success" else limits.error_retention_ms

    def _what(self, what: str) -> str:
        inst = self.claim.instance
        return f"instance {inst.workflow}/{inst.id}: {_WHAT.get(what, what)}"

    async def _guard(self, make: Callable[[], Awaitable[Any]], outcome: str | None) -> str:
        """Make a run's final write: ``outcome`` (or, when None, what the write returns) once it is stored;
        "aborted" when the lease is gone, or when the database took no writes while the lease held."""
        try:
            await self._note_divergence()
            try:
                result = await make()
            except StorageUnavailableError as exc:
                result = await retry_unavailable(
                    make, exc, window=self.lease_window, what=self._what(outcome or "suspension")
                )
        except (FencedError, GaveUp):
            return "aborted"
        return outcome if outcome is not None else str(result)


_WHAT = {
    "history": "reading its history",
    "complete": "writing its completion",
    "errored": "writing its error",
    "paused": "writing its pause",
    "suspension": "writing its suspension",
    "divergence": "writing how its replay diverged",
}


def _decode_dict(text: str | None) -> dict[str, Any] | None:
    if not text:
        return None
    value = codec.decode(text)
    return value if isinstance(value, dict) else None
