"""The state of one execution (one replay) of an instance, shared by its steps and its executor.

Control flow that user code must not swallow travels as ``BaseException`` subclasses: :class:`Suspend`
unwinds ``run()`` when the instance hibernates (a sleep, an event wait, a long retry wait, a drained pause);
:class:`Abort` unwinds it when the run lost its lease (terminated, restarted, deleted, or taken over).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, Protocol, TypeVar

from stepstone.clock import Clock
from stepstone.divergence import Divergence, StepId, recorded_id
from stepstone.errors import FencedError, ReplayDivergenceError, StorageUnavailableError, WorkflowFatalError
from stepstone.history import Mark, RollbackPass, mark, rollback_lifecycle, step_events
from stepstone.limits import Limits
from stepstone.models import (
    DEFAULT_ACCOUNT,
    EventRecord,
    InstanceRecord,
    Lease,
    NewEvent,
    StepKind,
    StepRecord,
    step_key,
)
from stepstone.step_process import StepProcesses
from stepstone.step_threads import StepThreads
from stepstone.storage.base import Storage

_KINDS: Final[dict[str, StepKind]] = {"do": "do", "sleep": "sleep", "waitForEvent": "wait"}
"""Counter-key prefix (``do-name``) → stored step kind: lets :meth:`RunState.next_count` find the step's key."""
_SETTLED: Final[frozenset[str]] = frozenset({"success", "error", "timeout"})
LEASE_MARGIN: Final[float] = 0.25
"""The share of the lease length kept in reserve: an attempt starts only while the lease is confirmed for at
least that much longer (room for clock skew between workers and for the attempt's own start)."""

WRITE_RETRY_FIRST_S: Final[float] = 0.05
WRITE_RETRY_MAX_S: Final[float] = 1.0
"""A run's write that the database cannot take now (disk full, unreachable) is retried after 50 ms, doubling
up to 1 s, for as long as the run's lease window holds."""

log = logging.getLogger("stepstone.executor")
T = TypeVar("T")
P = ParamSpec("P")


class LeaseWindow:
    """Until when (``time.monotonic()``) this worker knows a run's lease is still its own.

    The worker moves it forward after each claim and renewal that confirmed the lease, from the moment the
    request was *sent* (so a reply that arrives late, after a freeze, confirms nothing beyond what it can).
    The check before each attempt is one clock read and one comparison; no query.
    """

    __slots__ = ("lease_seconds", "release", "valid_until")

    def __init__(self, lease_seconds: float, confirmed_at: float) -> None:
        self.lease_seconds = lease_seconds
        self.valid_until = confirmed_at + lease_seconds * (1 - LEASE_MARGIN)
        self.release = False
        """Set when the run gave up for want of a confirmed lease (a write that could not be made, a lease
        not renewed): the worker then releases the lease, so the instance is claimable at once."""

    def confirmed(self, sent_at: float) -> None:
        """A claim or renewal sent at ``sent_at`` (monotonic) found the lease held."""
        self.valid_until = max(self.valid_until, sent_at + self.lease_seconds * (1 - LEASE_MARGIN))

    def remaining(self) -> float:
        """Seconds left before an attempt may no longer start (negative: the lease may be gone)."""
        return self.valid_until - time.monotonic()


async def retry_unavailable(
    make: Callable[[], Awaitable[T]], error: StorageUnavailableError, *, window: LeaseWindow | None, what: str
) -> T:
    """Make a run's write again after ``error``, with backoff, while ``window`` holds; returns its result.

    Raises :class:`GaveUp` once the window has lapsed with the write still failing (the window is marked for
    release), ``error`` at once for a run without a window, and whatever else the write raises (a fenced write).
    """
    if window is None:
        raise error
    delay = WRITE_RETRY_FIRST_S
    tries = 1
    log.warning("%s failed (%s); retrying while the lease holds (%.1fs left)", what, error, window.remaining())
    while True:
        remaining = window.remaining()
        if remaining <= 0:
            window.release = True
            log.error(
                "%s failed %d time(s) until the lease could no longer be confirmed (%s); giving the instance up "
                "(released: it runs again from its recorded steps as soon as the database takes writes)",
                what,
                tries,
                error,
            )
            raise GaveUp(what) from error
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, WRITE_RETRY_MAX_S)
        tries += 1
        try:
            result = await make()
        except StorageUnavailableError as exc:
            error = exc
            continue
        log.info("%s succeeded after %d tries", what, tries)
        return result


class GaveUp(Exception):
    """A run's write could not be made while its lease was confirmed: the run stops and its lease is released."""


class RunHooks(Protocol):
    """What observers (``stepstone.observe``) learn from a run; the engine passes one in, or None."""

    def step_written(self, state: RunState, step: StepRecord) -> None:
        """A live step record was just stored (a result, a failed attempt, a sleep or wait begun or ended)."""

    def attempt(self, state: RunState, step: StepRecord, attempt: int, aw: Awaitable[Any]) -> Awaitable[Any]:
        """Wrap one live attempt of a ``step.do`` (a trace span around it); return ``aw`` to add nothing."""


class ChildHost(Protocol):
    """How a run starts and looks up child instances (``step.run_workflow``): the engine passes one in."""

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
        """Create the child linked to ``parent_pk`` unless it exists; return its record as it is now."""
        ...

    async def get_child(self, account: str, workflow: str, instance_id: str) -> InstanceRecord | None:
        """A child's record as it is now, or None (deleted)."""
        ...


class TestHooks(Protocol):
    """How a test engine (``stepstone.testing.TestEngine``) modifies its runs for workflow introspection: mocked
    attempts, skipped sleeps and retry delays, forced event timeouts, mocked events. An :class:`Engine` has none,
    so a production run's ``test_hooks`` is always None."""

    def attempt(
        self, state: RunState, name: str, count: int, attempt: int, run: Callable[[], Awaitable[Any]]
    ) -> Awaitable[Any]:
        """One live attempt of a ``step.do``: ``run()`` for the real one, or a mocked result, error or timeout."""
        ...

    def skip_sleep(self, state: RunState, name: str, count: int) -> bool:
        """Whether this sleep ends at once."""
        ...

    def skip_retry_delay(self, state: RunState, name: str, count: int) -> bool:
        """Whether this step retries at once."""
        ...

    def event_timeout(self, state: RunState, name: str, count: int) -> bool:
        """Whether this event wait times out at once."""
        ...

    def mocked_event(self, state: RunState, event_type: str) -> tuple[Any] | None:
        """A mocked event's payload for a wait of this type (consumed), or None."""
        ...


current_run: contextvars.ContextVar[RunState | None] = contextvars.ContextVar("stepstone_current_run", default=None)
"""The run whose ``run()`` (or step) is executing in this context: set by the executor for its run task, read by
the log filter and the stdout wrapper in ``stepstone.observe.logs``."""


class Suspend(BaseException):
    """Unwinds ``run()`` so the instance can hibernate; never seen by user code that catches Exception."""


class Abort(BaseException):
    """Unwinds ``run()`` because this execution may no longer write (fenced, terminated, restarted)."""


class RollBack(BaseException):
    """Unwinds ``run()`` of an instance terminated with ``rollback=True`` at its first step not in its history:
    the executor then runs the undo handlers the replay registered, and ends the instance terminated."""


@dataclass(slots=True)
class WakeReason:
    """Why and until when a suspended step waits."""

    kind: str
    name: str
    until: float | None
    event_type: str | None = None


@dataclass(slots=True)
class RunState:
    """Everything one execution of an instance shares between its steps and the executor."""

    storage: Storage
    clock: Clock
    lease: Lease
    limits: Limits
    workflow: str
    instance_id: str
    history: dict[str, StepRecord]
    events: list[EventRecord]
    inprocess_wait_s: float = 1.0
    counters: dict[str, int] = field(default_factory=dict)
    do_calls: int = 0
    seq: int = 0
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    suspending: bool = False
    aborted: bool = False
    pausing: bool = False
    unpaused: asyncio.Event = field(default_factory=asyncio.Event)
    wakes: list[WakeReason] = field(default_factory=list)
    buffered: dict[str, deque[EventRecord]] = field(default_factory=dict)
    fatal: BaseException | None = None
    parked: int = 0
    """Branches waiting in process for a short timer: while nothing else runs, the instance is waiting."""
    on_park: Callable[[int], None] | None = None
    """Told +1 when the first branch parks and -1 when the last one leaves."""
    hooks: RunHooks | None = None
    threads: StepThreads | None = None
    """The worker's threads for sync steps (None: a shared fallback pool)."""
    processes: StepProcesses | None = None
    """The worker's child processes, when the workflow runs its sync steps under ``isolation="process"``."""
    lease_window: LeaseWindow | None = None
    """How long the worker knows the lease holds; None (a run without a worker) checks nothing."""
    test_hooks: TestHooks | None = None
    """The test engine's modifications; None in every production engine."""
    account: str = DEFAULT_ACCOUNT
    """The instance's account (its children are created in it)."""
    children: ChildHost | None = None
    """Starts child instances; None where no engine runs the instance (``run_workflow`` is then an error)."""
    replaying: bool = False
    """True from the start of a run that has history, while every step called so far was served from it; the
    first step call that is not settled there (new, or pending: a retry, a sleep or wait not yet over) ends the
    replay for good. A run with no history starts live."""
    stored_bytes: int = -1
    """The instance's recorded state (step results and streamed outputs), counted from the history when a step
    first records a result in this run (-1 until then), against ``limits.instance_state_bytes``."""
    marks: dict[str, Mark] = field(default_factory=dict)
    """How far each step's stored record got, so a write adds only the events it is the first to tell of
    (:mod:`stepstone.history`); taken from the history as loaded, before any step changes it. A step loaded
    settled has none here: it is served as recorded and never changes, so its mark is taken from it if it is
    ever written (which reads its attempts; a replay reads none)."""
    loaded_seq: int = 0
    """The largest ``seq`` of the history as loaded: a step at or below it was loaded, a later one is new."""
    undo: list[Any] = field(default_factory=list)
    """The undo handlers of the ``step.with_rollback`` steps completed in this run and not yet rolled back
    (:class:`stepstone.step_rollback.Undo`), in completion order."""
    rollback: RollbackPass | None = None
    """The pass of undo handlers running now, if one is (its writes add the ``rollback_*`` pass events)."""
    rolling_back: bool = False
    """The instance was terminated with ``rollback=True``: ``run()`` replays its history, then unwinds
    (:class:`RollBack`) at its first step that would run, so the executor can roll back."""
    on_divergence: str = "record"
    """``record`` or ``fail``: what a replay that no longer reaches the recorded steps does
    (:mod:`stepstone.divergence`)."""
    recorded: dict[str, StepRecord] = field(default_factory=dict)
    """The steps of the history as loaded that ``run()`` calls (not undo handlers): new steps of this run are
    added to :attr:`history`, not here."""
    reached: set[str] = field(default_factory=set)
    """Keys of recorded steps this run has called."""
    first_run: list[StepId] = field(default_factory=list)
    """Steps this run called that history does not hold, in call order."""
    divergence: Divergence | None = None
    """How this run's replay diverged, once judged so."""
    _judge_next: bool = False
    _judgement: asyncio.Future[None] | None = None

    def __post_init__(self) -> None:
        self.idle.set()
        self.unpaused.set()
        self.replaying = bool(self.history)  # run() ran before: it re-runs until the first step not settled
        self.seq = self.loaded_seq = max((s.seq for s in self.history.values()), default=0)
        self.marks = {key: mark(step) for key, step in self.history.items() if step.status not in _SETTLED}
        self.recorded = {key: step for key, step in self.history.items() if step.kind in ("do", "sleep", "wait")}
        for event in self.events:
            self.buffered.setdefault(event.type, deque()).append(event)

    def next_count(self, counter_key: str, name: str | None = None) -> int:
        """The next occurrence number for a counter key (first is 1), assigned at call time. ``name`` is the
        step's name as written (the counter key of a sleep adds its length)."""
        count = self.counters.get(counter_key, 0) + 1
        self.counters[counter_key] = count
        if not self.replaying and not self.recorded:  # a run with no history: nothing to serve or to judge
            return count
        prefix, _, rest = counter_key.partition("-")
        key = step_key(_KINDS[prefix], rest, count)
        if self.replaying:
            settled = self.history.get(key)
            if settled is None or settled.status not in _SETTLED:
                self.replaying = False
        if key in self.recorded:
            self.reached.add(key)
        elif self.recorded:
            self.first_run.append(StepId(prefix, name if name is not None else rest, count))
            self._judge_next = self._judgement is None
        return count

    def judged(self, make: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> Awaitable[T]:
        """The step just counted, ``make(*args, **kwargs)``, started once the replay is judged (when it is the
        first step history does not hold; otherwise at once: the common case builds no closure). Raises the
        divergence error of an ``on_divergence="fail"`` run."""
        if isinstance(self.fatal, ReplayDivergenceError):
            raise self.fatal
        if not self._judge_next and (self._judgement is None or self._judgement.done()):
            return make(*args, **kwargs)
        self._judge_next = False
        if self._judgement is None and not self._unreached():
            # every recorded step was reached already: no divergence, and no turn of the loop given away (a
            # sibling's hibernation must not overtake this step's start)
            self._judgement = asyncio.get_running_loop().create_future()
            self._judgement.set_result(None)
            return make(*args, **kwargs)
        return self._judge_then(functools.partial(make, *args, **kwargs))

    def _unreached(self) -> list[StepRecord]:
        return sorted((s for k, s in self.recorded.items() if k not in self.reached), key=lambda s: s.seq)

    async def _judge_then(self, make: Callable[[], Awaitable[T]]) -> T:
        if self._judgement is None:
            self._judgement = asyncio.ensure_future(self._judge())
        await asyncio.shield(self._judgement)
        if isinstance(self.fatal, ReplayDivergenceError):
            raise self.fatal
        return await make()

    async def _judge(self) -> None:
        # Other branches (asyncio.gather) may not have reached their recorded steps yet: replayed steps return
        # without yielding, so a few turns of the loop in which nothing more is reached let them catch up.
        quiet, seen = 0, len(self.reached)
        for _ in range(100):
            await asyncio.sleep(0)
            quiet = quiet + 1 if len(self.reached) == seen else 0
            seen = len(self.reached)
            if quiet >= 3:
                break
        missing = self._unreached()
        if not missing:
            return
        failed = self.on_divergence == "fail"
        found = Divergence([recorded_id(s) for s in missing], list(self.first_run), self.clock.now(), failed=failed)
        self.divergence = found
        message = found.message()
        log.warning("instance %s/%s: replay diverged: %s", self.workflow, self.instance_id, message)
        if failed:
            self.fatal = ReplayDivergenceError(f"{message} (on_divergence='fail')")

    def divergence_report(self) -> Divergence | None:
        """The divergence as the run ends: every step it ran first, and which missing steps it reached later."""
        if self.divergence is None:
            return None
        ids = {recorded_id(s): k for k, s in self.recorded.items()}
        self.divergence.reached_late = [s for s in self.divergence.not_reached if ids.get(s) in self.reached]
        if not self.divergence.failed:
            self.divergence.first_run = list(self.first_run)
        return self.divergence

    def observed(self, step: StepRecord, attempt: int, aw: Awaitable[Any]) -> Awaitable[Any]:
        """One live attempt, wrapped by the hooks (a trace span) when there are any."""
        return aw if self.hooks is None else self.hooks.attempt(self, step, attempt, aw)

    def next_seq(self) -> int:
        """The order in which a new step first started."""
        self.seq += 1
        return self.seq

    def count_do_call(self) -> None:
        """Count a step.do call against the step limit."""
        self.do_calls += 1
        if self.do_calls > self.limits.steps:
            raise WorkflowFatalError(
                f"The limit of {self.limits.steps} steps has been reached. This limit can be changed in "
                "your worker configuration."
            )

    def suspend(self, reason: WakeReason) -> Suspend:
        """Record why the instance must hibernate and return the signal to raise."""
        self.suspending = True
        self.wakes.append(reason)
        return Suspend()

    def check_open(self) -> None:
        """Raise the pending signal if this execution is unwinding."""
        if self.aborted:
            raise Abort()
        if self.suspending:
            raise Suspend()

    def check_live(self) -> None:
        """After a step call's counter: unwind a run being rolled back once its replay is over."""
        if self.rolling_back and not self.replaying and self.rollback is None:
            raise RollBack()

    async def gate(self) -> None:
        """Wait here before a new attempt while a pause is draining; unwind if the run is ending."""
        self.check_open()
        while self.pausing:
            await self.unpaused.wait()
            self.check_open()

    def check_lease(self, display: str) -> None:
        """Before an attempt starts: unwind (abandon the run) unless the lease is known to hold for a margin.

        A worker that was frozen (SIGSTOP, a VM pause) or starved past its lease must not start a step body
        that another worker may already be running or have recorded; its writes would be refused, but the
        side effect would happen twice.
        """
        window = self.lease_window
        if window is None:
            return
        remaining = window.remaining()
        if remaining > 0:
            return
        log.warning(
            "instance %s/%s: lease not confirmed for %.1fs (lease %.1fs); abandoning the run before step %r "
            "(another worker resumes it)",
            self.workflow,
            self.instance_id,
            window.lease_seconds * (1 - LEASE_MARGIN) - remaining,
            window.lease_seconds,
            display,
        )
        window.release = True  # fenced like every lease write: a no-op if another worker holds it by now
        self.aborted = True
        raise Abort()

    async def wait_in_process(self, reason: WakeReason) -> None:
        """Wait for a short timer without hibernating.

        The reason stays registered while waiting, so that if a sibling branch makes the instance hibernate
        meanwhile, the instance wakes in time for this timer too.
        """
        if self.suspending:
            raise self.suspend(reason)
        assert reason.until is not None
        self.wakes.append(reason)
        self.parked += 1
        if self.parked == 1 and self.on_park is not None:
            self.on_park(1)
        try:
            await self.clock.sleep(reason.until - self.clock.now())
        finally:
            self.parked -= 1
            if self.parked == 0 and self.on_park is not None:
                self.on_park(-1)
            self.wakes.remove(reason)
        if self.suspending and not self.aborted:
            # A sibling made the instance hibernate while we waited: this branch is ready to go on, so the
            # instance must come back at once.
            raise self.suspend(WakeReason(reason.kind, reason.name, self.clock.now()))
        self.check_open()

    def enter(self) -> None:
        """An attempt starts."""
        self.inflight += 1
        self.idle.clear()

    def leave(self) -> None:
        """An attempt ended."""
        self.inflight -= 1
        if self.inflight == 0:
            self.idle.set()

    def request_pause(self) -> None:
        """Block new attempts; the executor parks the instance once in-flight ones finish."""
        self.pausing = True
        self.unpaused.clear()

    def cancel_pause(self) -> None:
        """Resume arrived before the pause drained."""
        self.pausing = False
        self.unpaused.set()

    def take_event(self, event_type: str) -> EventRecord | None:
        """The oldest buffered event of this type not yet taken in this execution."""
        queue = self.buffered.get(event_type)
        return queue.popleft() if queue else None

    def _events(self, step: StepRecord) -> list[NewEvent]:
        prev = self.marks.get(step.key)
        if prev is None and step.seq <= self.loaded_seq and step.status in _SETTLED:
            prev = mark(step)  # loaded settled, so unchanged since (see ``marks``)
        events, self.marks[step.key] = step_events(prev, step)
        if step.kind == "rollback":
            before, after = rollback_lifecycle(prev, step, self.rollback)
            events = [*before, *events, *after]
        return events

    async def write(self, step: StepRecord, *, durable: bool = True) -> None:
        """Persist a step with the events it adds; a lost lease unwinds the run. A write the database cannot
        take now (disk full, unreachable) is retried while the lease holds, then the run gives up."""
        events = self._events(step)
        try:
            await self.storage.put_step(self.lease, step, durable=durable, events=events)
        except FencedError:
            self.aborted = True
            raise Abort() from None
        except StorageUnavailableError as exc:
            await self._retry(lambda: self.storage.put_step(self.lease, step, durable=True, events=events), exc, step)
        if self.hooks is not None:
            self.hooks.step_written(self, step)

    async def _retry(
        self, make: Callable[[], Awaitable[None]], error: StorageUnavailableError, step: StepRecord
    ) -> None:
        what = f"instance {self.workflow}/{self.instance_id}: writing step {step.name!r} ({step.status})"
        try:
            await retry_unavailable(make, error, window=self.lease_window, what=what)
        except (FencedError, GaveUp):
            self.aborted = True
            raise Abort() from None

    def write_nowait(self, step: StepRecord) -> None:
        """Queue a step write into the next commit without waiting for it (a fenced one is dropped)."""
        if not self.aborted and not self.suspending:
            self.storage.put_step(self.lease, step, durable=False, events=self._events(step))

    async def consume(self, step: StepRecord, event_pk: int) -> None:
        """Persist a wait step's result together with consuming its event (retried as :meth:`write` is)."""
        events = self._events(step)
        try:
            await self.storage.consume_event(self.lease, step, event_pk, events=events)
        except FencedError:
            self.aborted = True
            raise Abort() from None
        except StorageUnavailableError as exc:
            await self._retry(lambda: self.storage.consume_event(self.lease, step, event_pk, events=events), exc, step)
        if self.hooks is not None:
            self.hooks.step_written(self, step)

    def waiting_for(self) -> tuple[float | None, str, list[str]]:
        """Earliest wake-up, the JSON description of what the instance waits for, and event types."""
        untils = [w.until for w in self.wakes if w.until is not None]
        wake = min(untils) if untils else None
        first = min(self.wakes, key=lambda w: w.until if w.until is not None else float("inf"))
        types = sorted({w.event_type for w in self.wakes if w.event_type})
        described = {"kind": first.kind, "name": first.name, "until": wake, "types": types}
        return wake, json.dumps(described), types
