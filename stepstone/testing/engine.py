"""The test engine: an :class:`~stepstone.engine.Engine` on a time-skipping clock, with no retention purge,
leases that never lapse on a skip, and the hooks that workflow introspection (``stepstone.testing``) uses."""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from stepstone.binding import Workflow
from stepstone.clock import Clock
from stepstone.engine import Engine
from stepstone.models import Claim, InstanceRecord, StepRecord
from stepstone.observe import Observer
from stepstone.run_state import RunState
from stepstone.storage.base import Storage
from stepstone.testing.clock import TimeSkippingClock
from stepstone.testing.mocks import Mocks

if TYPE_CHECKING:
    from stepstone.testing.introspect import WorkflowIntrospector

_ENGINES: weakref.WeakKeyDictionary[Workflow, TestEngine] = weakref.WeakKeyDictionary()


def engine_of(workflow: Workflow) -> TestEngine | None:
    """The test engine a binding belongs to; None for a production engine's binding."""
    return _ENGINES.get(workflow)


class _TestObserver(Observer):
    """Tells each open ``introspect_workflow`` block of the instances created in its workflow, and keeps the
    deadlines of the event waits the instances are in (for :meth:`TestEngine.hold_event_deadline`)."""

    def __init__(self, engine: TestEngine) -> None:
        self._engine = engine

    def instances_created(self, records: Sequence[InstanceRecord], *, now: float) -> None:
        for record in records:
            for introspector in list(self._engine.introspectors.get(record.workflow, [])):
                introspector.created(record.id)

    def step_written(self, state: RunState, step: StepRecord) -> None:
        if step.kind != "wait":
            return
        waits = self._engine.event_waits.setdefault((state.workflow, state.instance_id), {})
        if step.status == "waiting" and step.wake_at is not None and step.event_type is not None:
            waits[(step.name, step.count)] = (step.event_type, step.wake_at)
        else:
            waits.pop((step.name, step.count), None)

    def run_finished(self, claim: Claim, outcome: str, *, now: float, error: tuple[str, str] | None) -> None:
        if outcome in ("complete", "errored"):
            self._engine.event_waits.pop((claim.instance.workflow, claim.instance.id), None)


FAKE_CLOCK_ENGINE_OPTIONS: Final[dict[str, Any]] = {
    # Everything happens in one process, so the worker never needs to poll; leases never expire on a jump.
    "poll_interval": 10 * 365 * 86400.0,
    "lease_seconds": 100 * 365 * 86400.0,
}
"""Engine options for a :class:`~stepstone.testing.FakeClock` that jumps: no polling, leases that outlive jumps."""

TEST_ENGINE_DEFAULTS: Final[dict[str, Any]] = {
    "lease_seconds": 100 * 365 * 86400.0,  # a skip of a year never makes the test's own lease lapse
    "purge_interval": math.inf,  # a skip past the retention never deletes the test's instances
    "synchronous": "NORMAL",  # a test database need not survive a power cut
}


class TestEngine(Engine):
    """An engine for tests. Same arguments as :class:`~stepstone.engine.Engine`; the differences:

    - ``clock`` defaults to a :class:`~stepstone.testing.TimeSkippingClock`, attached to this engine so it
      skips ahead only when every instance is idle;
    - finished instances are never purged (``purge_interval`` is infinite), and on a time-skipping clock leases
      last a century whatever ``lease_seconds`` says, so skipping time never deletes or takes over the test's
      instances;
    - SQLite commits with ``synchronous=NORMAL``;
    - its runs apply what ``introspect_workflow`` / ``introspect_workflow_instance`` record (a production
      :class:`~stepstone.engine.Engine` has no such hook, and introspection refuses its bindings).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, database: str | Storage | None = None, *, clock: Clock | None = None, **options: Any) -> None:
        for key, value in TEST_ENGINE_DEFAULTS.items():
            options.setdefault(key, value)
        clock = clock or TimeSkippingClock()
        if isinstance(clock, TimeSkippingClock):
            # Renewals come every few real seconds while skips move time by days: a shorter lease (a project's
            # lease_seconds, say) would lapse under a skip and let this worker take its own run over.
            options["lease_seconds"] = max(float(options["lease_seconds"]), TEST_ENGINE_DEFAULTS["lease_seconds"])
        super().__init__(database, clock=clock, **options)
        self.mocks = Mocks()
        """The modifications of this engine's instances, by (workflow, instance id)."""
        self.introspectors: dict[str, list[WorkflowIntrospector]] = {}
        """The open ``introspect_workflow`` blocks, by workflow name."""
        self.event_waits: dict[tuple[str, str], dict[tuple[str, int], tuple[str, float]]] = {}
        """Pending event waits: (workflow, instance id) -> (step name, count) -> (event type, deadline)."""
        self._holds: dict[tuple[str, str, str], float] = {}
        self._test_hooks = self.mocks
        self.observers.add(_TestObserver(self))

    def workflow(self, name: str) -> Workflow:
        """The binding for a workflow, known to introspection as this test engine's."""
        binding = super().workflow(name)
        _ENGINES[binding] = self
        return binding

    async def start(self) -> None:
        """Start as an Engine does, then let a time-skipping clock skip while this engine is idle."""
        await super().start()
        if isinstance(self.clock, TimeSkippingClock) and self.worker is not None:
            self.clock.attach(self.next_wakeup_if_idle)

    async def stop(self) -> None:
        """Stop skipping, then stop as an Engine does."""
        if isinstance(self.clock, TimeSkippingClock):
            await self.clock.detach()
        await super().stop()

    def next_wakeup_if_idle(self) -> float | None:
        """The earliest wake-up an instance waits for, if every runnable instance is idle; else None.

        Idle: the worker's claim loop waits and nothing has woken it (no instance created, resumed or sent an
        event since its last claim), and each run it holds has no step attempt in flight, is not loading,
        writing, pausing or hibernating, but waits in process for a short timer. The wake-ups are those timers
        and the earliest ``runnable_at`` of the hibernating instances; a step's own timeout is never one.
        """
        worker = self.worker
        if worker is None or not worker.idle:
            return None
        wakes: list[float] = [] if worker.next_due is None else [worker.next_due]
        for execution, task in worker.running.values():
            state = execution.state
            if task.done() or state is None or state.inflight or not state.parked:
                return None
            if state.suspending or state.pausing or state.aborted:
                return None
            wakes.extend(w.until for w in state.wakes if w.until is not None)
        if not wakes:
            return None
        target = min(wakes)
        if self._holds and self._held_before(target):
            return None
        return target

    # -- holds: the clock does not skip over an event deadline the test is about to beat ------------------------
    def hold_event_deadline(self, workflow: str, instance_id: str, event_type: str, seconds: float = math.inf) -> None:
        """Do not skip to (or past) the deadline of this instance's wait for ``event_type`` for ``seconds`` real
        seconds (``wait_for_event_wait`` holds while it polls and ``EVENT_HOLD_S`` after it returns)."""
        self._holds[(workflow, instance_id, event_type)] = time.monotonic() + seconds

    def release_holds(self, workflow: str, instance_id: str) -> None:
        """Let the clock skip over this instance's event deadlines again (each other kit wait on it does)."""
        for key in [k for k in self._holds if k[:2] == (workflow, instance_id)]:
            del self._holds[key]

    def _held_before(self, target: float) -> bool:
        now = time.monotonic()
        for key, until in list(self._holds.items()):
            if until <= now:
                del self._holds[key]
                continue
            workflow, instance_id, event_type = key
            for kind, deadline in self.event_waits.get((workflow, instance_id), {}).values():
                if kind == event_type and deadline <= target:
                    return True
        return False
