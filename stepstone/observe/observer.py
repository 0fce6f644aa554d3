"""The observer interface the engine calls, and the fan-out that calls several observers."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

from stepstone.models import Claim, InstanceRecord, StepRecord
from stepstone.run_state import RunState


class Observer:
    """Hears what the engine does; every method is a no-op here, so a subclass overrides what it needs.

    Methods are called on the event loop and must not block or raise (an observer bug must not fail a run).
    """

    def instances_created(self, records: Sequence[InstanceRecord], *, now: float) -> None:
        """Instances were stored by ``create``/``create_batch`` in this process."""

    def instance_terminated(self, record: InstanceRecord, *, now: float) -> None:
        """An instance was terminated through this process's API (``terminate()``, REST, CLI)."""

    def run_started(self, claim: Claim, *, now: float) -> None:
        """A worker in this process claimed an instance and starts running it.

        Called inside the context the run's task will copy, so context variables set here (a trace span)
        are current for the whole run.
        """

    def run_finished(self, claim: Claim, outcome: str, *, now: float, error: tuple[str, str] | None) -> None:
        """A run ended: ``complete``, ``errored``, ``waiting``, ``paused``, ``aborted``, ``cancelled`` or
        ``failed`` (an engine bug); ``error`` is the (name, message) an errored instance finished with."""

    def step_written(self, state: RunState, step: StepRecord) -> None:
        """A live step record was just stored (see :class:`~stepstone.run_state.RunHooks`)."""

    def attempt(self, state: RunState, step: StepRecord, attempt: int, aw: Awaitable[Any]) -> Awaitable[Any]:
        """Wrap one live attempt (return ``aw`` unchanged to add nothing)."""
        return aw

    def claimed(self, *, takeovers: int) -> None:
        """A claim took over ``takeovers`` instances whose previous worker's lease had expired."""


class Observers(Observer):
    """Calls each observer in turn; an observer that raises is skipped for that call, never the run."""

    def __init__(self, observers: Sequence[Observer] = ()) -> None:
        self.observers: list[Observer] = list(observers)
        self._index()

    def add(self, observer: Observer) -> None:
        """Add an observer (before the engine starts running instances)."""
        self.observers.append(observer)
        self._index()

    def _index(self) -> None:
        # The per-step calls go only to the observers that override them: a step's write costs no more than that.
        self._wrapping = [o for o in self.observers if type(o).attempt is not Observer.attempt]
        self._writes = [o.step_written for o in self.observers if type(o).step_written is not Observer.step_written]

    def __bool__(self) -> bool:
        return bool(self.observers)

    def instances_created(self, records: Sequence[InstanceRecord], *, now: float) -> None:
        for o in self.observers:
            _safe(o.instances_created, records, now=now)

    def instance_terminated(self, record: InstanceRecord, *, now: float) -> None:
        for o in self.observers:
            _safe(o.instance_terminated, record, now=now)

    def run_started(self, claim: Claim, *, now: float) -> None:
        for o in self.observers:
            _safe(o.run_started, claim, now=now)

    def run_finished(self, claim: Claim, outcome: str, *, now: float, error: tuple[str, str] | None) -> None:
        for o in self.observers:
            _safe(o.run_finished, claim, outcome, now=now, error=error)

    def step_written(self, state: RunState, step: StepRecord) -> None:
        for written in self._writes:
            try:
                written(state, step)
            except Exception:
                _failed(written)

    def attempt(self, state: RunState, step: StepRecord, attempt: int, aw: Awaitable[Any]) -> Awaitable[Any]:
        for o in self._wrapping:
            aw = o.attempt(state, step, attempt, aw)
        return aw

    def claimed(self, *, takeovers: int) -> None:
        for o in self.observers:
            _safe(o.claimed, takeovers=takeovers)


def first_run(instance: InstanceRecord) -> bool:
    """Whether a just-claimed instance starts its first run: a claim sets ``modified_on`` to its time, and
    ``started_on`` too only when it was unset."""
    return instance.started_on is not None and instance.started_on == instance.modified_on


def _safe(fn: Any, *args: Any, **kwargs: Any) -> None:
    try:
        fn(*args, **kwargs)
    except Exception:  # an observer's bug is logged, never the run's failure
        _failed(fn)


def _failed(fn: Any) -> None:
    """Log the exception being handled: an observer's bug, never the run's failure."""
    import logging

    logging.getLogger("stepstone.observe").exception("observer %r failed", fn)
