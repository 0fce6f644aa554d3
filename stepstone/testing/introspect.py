"""Cloudflare's workflow introspection for pytest: ``introspect_workflow`` and ``introspect_workflow_instance``.

Both are async context managers over a binding of a :class:`~stepstone.testing.TestEngine` (a production
engine's binding is refused): ``modify(fn)`` records modifications (see :mod:`stepstone.testing.mocks`) before
or while the instance runs, the waits read what it does. Leaving the block disposes of the introspector as
Cloudflare's ``dispose()`` does: its modifications stop applying, and each of its instances that has not
finished is terminated (Cloudflare aborts it), so nothing from one test runs on into the next.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from stepstone.binding import Workflow
from stepstone.errors import InstanceNotFoundError, InvalidStateError
from stepstone.instance import InstanceError, InstanceStatus, WorkflowInstance
from stepstone.models import FINISHED
from stepstone.testing import waits
from stepstone.testing.mocks import InstanceMocks, Modifier
from stepstone.testing.waits import StepSelector

if TYPE_CHECKING:
    from stepstone.testing.engine import TestEngine

ModifierCallback = Callable[[Modifier], Awaitable[Any] | Any]


async def _call(fn: ModifierCallback, modifier: Modifier) -> None:
    result = fn(modifier)
    if inspect.isawaitable(result):
        await result


class InstanceIntrospector:
    """One instance, by id, whether or not it exists yet: modify it, wait on it, read its output or error."""

    def __init__(self, engine: TestEngine, workflow: Workflow, instance_id: str) -> None:
        self._engine = engine
        self.workflow = workflow
        self.id = instance_id
        self.instance = WorkflowInstance(workflow, instance_id)
        """The instance's handle (``status()``, ``send_event()``...)."""
        self._disposed = False

    def _mocks(self) -> InstanceMocks:
        return self._engine.mocks.instances.setdefault((self.workflow.name, self.id), InstanceMocks())

    async def modify(self, fn: ModifierCallback) -> Self:
        """Call ``fn(modifier)`` (sync or async) to record modifications of this instance; returns self."""
        if self._disposed:
            raise RuntimeError("Workflow instance introspector has been disposed.")
        mocks = self._mocks()
        await _call(fn, Modifier(lambda apply: apply(mocks)))
        return self

    async def wait_for_step_result(self, step: StepSelector, *, timeout: float = waits.DEFAULT_TIMEOUT) -> Any:
        """The step's final result; raises the step's error if it failed for good (see :mod:`~.waits`)."""
        return await waits.wait_for_step_result(self.instance, step, timeout=timeout)

    async def wait_for_status(self, status: str, *, timeout: float = waits.DEFAULT_TIMEOUT) -> InstanceStatus:
        """Wait for ``status``; an AssertionError if the instance finished in another one."""
        return await waits.wait_for_status(self.instance, status, timeout=timeout)

    async def wait_for_event_wait(self, event_type: str, *, timeout: float = waits.DEFAULT_TIMEOUT) -> dict[str, Any]:
        """Wait until the instance hibernates waiting for an event of ``event_type``."""
        return await waits.wait_for_event_wait(self.instance, event_type, timeout=timeout)

    async def get_output(self) -> Any:
        """The output of the complete instance."""
        return await waits.get_output(self.instance)

    async def get_error(self) -> InstanceError:
        """The error (``name``, ``message``) of the errored instance."""
        return await waits.get_error(self.instance)

    async def dispose(self) -> None:
        """Drop this instance's modifications and terminate it if it has not finished (idempotent)."""
        if self._disposed:
            return
        self._disposed = True
        try:
            status = (await self.instance.status()).status
            if status not in FINISHED:
                await self.instance.terminate()
        except (InstanceNotFoundError, InvalidStateError):
            pass
        finally:
            self._engine.mocks.instances.pop((self.workflow.name, self.id), None)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.dispose()


class WorkflowIntrospector:
    """Every instance of a workflow created while the block is open (``create`` or ``create_batch``, with or
    without an id): ``modify(fn)`` applies to each of them from its first step, ``get()`` lists them."""

    def __init__(self, engine: TestEngine, workflow: Workflow) -> None:
        self._engine = engine
        self.workflow = workflow
        self._operations: list[Callable[[InstanceMocks], None]] = []
        self._instances: dict[str, InstanceIntrospector] = {}
        self._open = False
        self._disposed = False

    async def modify(self, fn: ModifierCallback) -> Self:
        """Record modifications for every instance created from now on in the block (Cloudflare's
        ``modifyAll``); a mistake (a result mocked twice) raises here, at once."""
        if self._disposed:
            raise RuntimeError("Workflow introspector has been disposed.")
        recorded: list[Callable[[InstanceMocks], None]] = []

        def record(apply: Callable[[InstanceMocks], None]) -> None:
            apply(trial)  # check it now against everything recorded so far
            recorded.append(apply)

        trial = InstanceMocks()
        for op in self._operations:
            op(trial)
        await _call(fn, Modifier(record))
        self._operations.extend(recorded)
        return self

    modify_all = modify

    def created(self, instance_id: str) -> None:
        """Told by the engine of each instance of this workflow created while the block is open."""
        if not self._open or instance_id in self._instances:
            return
        mocks = self._engine.mocks.instances.setdefault((self.workflow.name, instance_id), InstanceMocks())
        for op in self._operations:
            with contextlib.suppress(Exception):  # an instance introspector's own modifications win
                op(mocks)
        self._instances[instance_id] = InstanceIntrospector(self._engine, self.workflow, instance_id)

    def get(self) -> list[InstanceIntrospector]:
        """An introspector for each instance created in the block so far, in creation order."""
        return list(self._instances.values())

    async def dispose(self) -> None:
        """Stop tracking new instances; dispose of every instance introspector (idempotent)."""
        if self._disposed:
            return
        self._disposed = True
        self._open = False
        sessions = self._engine.introspectors.get(self.workflow.name, [])
        if self in sessions:
            sessions.remove(self)
        for introspector in self._instances.values():
            await introspector.dispose()

    async def __aenter__(self) -> Self:
        self._open = True
        self._engine.introspectors.setdefault(self.workflow.name, []).append(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.dispose()


def _test_engine(workflow: Workflow, what: str) -> TestEngine:
    from stepstone.testing.engine import engine_of

    if not isinstance(workflow, Workflow):
        raise TypeError(f"{what}: expected a workflow binding (engine.env.MY_WORKFLOW), got {type(workflow).__name__}")
    engine = engine_of(workflow)
    if engine is None:
        raise TypeError(
            f"{what}: {workflow!r} belongs to a production Engine, and mocks never run there; introspect a "
            "binding of a stepstone.testing.TestEngine (the engine and project fixtures make one)"
        )
    return engine


def introspect_workflow(workflow: Workflow) -> WorkflowIntrospector:
    """Introspect every instance of ``workflow`` created inside ``async with introspect_workflow(...) as wf:``."""
    return WorkflowIntrospector(_test_engine(workflow, "introspect_workflow"), workflow)


def introspect_workflow_instance(workflow: Workflow, instance_id: str) -> InstanceIntrospector:
    """Introspect the instance ``instance_id`` of ``workflow`` (created before or inside the block)."""
    if not isinstance(instance_id, str) or not instance_id:
        raise TypeError(f"introspect_workflow_instance: instance_id must be a non-empty string, got {instance_id!r}")
    return InstanceIntrospector(_test_engine(workflow, "introspect_workflow_instance"), workflow, instance_id)
