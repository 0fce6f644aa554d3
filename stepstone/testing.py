"""The test kit: a fake clock that runs a week of sleeps in milliseconds, and helpers to wait on instances.

Example::

    clock = FakeClock(autojump=True)
    async with Engine("sqlite:///t.db", clock=clock, **FAKE_CLOCK_ENGINE_OPTIONS) as engine:
        wf = engine.register(MyWorkflow, name="w")
        inst = await wf.create(params={})
        assert (await wait_for_status(inst, "complete")).output == ...
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Any, Final

from stepstone.binding import InstanceStatus, WorkflowInstance
from stepstone.models import FINISHED

FAKE_CLOCK_ENGINE_OPTIONS: Final[dict[str, Any]] = {
    # Everything happens in one process, so the worker never needs to poll; leases never expire on a jump.
    "poll_interval": 10 * 365 * 86400.0,
    "lease_seconds": 100 * 365 * 86400.0,
}


class FakeClock:
    """A clock that moves only when told to, or, with ``autojump``, whenever every waiter is idle.

    Args:
        start: the initial time, epoch seconds.
        autojump: jump to the earliest pending deadline once nothing has happened for ``idle_s`` real seconds.
        idle_s: how long (real seconds) the program must be quiet before an automatic jump.
    """

    def __init__(self, start: float = 1_800_000_000.0, *, autojump: bool = False, idle_s: float = 0.01) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()
        self._autojump = autojump
        self._idle_s = idle_s
        self._jumper: asyncio.Task[None] | None = None
        self._activity = 0

    def now(self) -> float:
        """The fake current time."""
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Wait until the fake time has advanced by ``seconds``."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._ids), fut))
        self._activity += 1
        self._ensure_jumper()
        try:
            await fut
        finally:
            self._activity += 1

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Wait for ``event`` at most ``timeout`` fake seconds."""
        if event.is_set():
            return True
        if timeout is not None and timeout <= 0:
            return False
        waiter = asyncio.ensure_future(event.wait())
        tasks: set[asyncio.Future[Any]] = {waiter}
        timer: asyncio.Future[None] | None = None
        if timeout is not None:
            timer = asyncio.ensure_future(self.sleep(timeout))
            tasks.add(timer)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        return event.is_set()

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline passed."""
        self._now += seconds
        self._fire()

    def next_deadline(self) -> float | None:
        """The earliest pending deadline, if any."""
        self._drop_cancelled()
        return self._sleepers[0][0] if self._sleepers else None

    def _drop_cancelled(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    def _fire(self) -> None:
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
        self._activity += 1

    def _ensure_jumper(self) -> None:
        if self._autojump and (self._jumper is None or self._jumper.done()):
            self._jumper = asyncio.get_running_loop().create_task(self._jump_when_idle())

    async def _jump_when_idle(self) -> None:
        while True:
            seen = self._activity
            await asyncio.sleep(self._idle_s)
            if self._activity != seen:
                continue
            deadline = self.next_deadline()
            if deadline is None:
                return
            if deadline > self._now:
                self._now = deadline
            self._fire()


async def wait_for_status(
    instance: WorkflowInstance, *statuses: str, timeout: float = 10.0, interval: float = 0.005
) -> InstanceStatus:
    """Poll until the instance is in one of ``statuses`` (default: any finished one); real-time ``timeout``.

    Raises:
        AssertionError: the instance finished in another status, or the timeout passed.
    """
    wanted = set(statuses) or set(FINISHED)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        status = await instance.status()
        if status.status in wanted:
            return status
        if status.status in FINISHED:
            raise AssertionError(f"instance {instance.id} ended {status.status} ({status.error}), wanted {wanted}")
        if loop.time() > deadline:
            raise AssertionError(f"instance {instance.id} is still {status.status} after {timeout}s, wanted {wanted}")
        await asyncio.sleep(interval)
