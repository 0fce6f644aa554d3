"""Clocks for tests: :class:`TimeSkippingClock` (real time that skips ahead when the engine is idle) and
:class:`FakeClock` (time that moves only when the test moves it)."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

IdleProbe = Callable[[], float | None]
"""Returns the time to skip to when every runnable instance is idle and one waits for a later wake-up, else
None (something is running, or ready to run, or nothing waits for a time)."""


class _Sleepers:
    """Futures waiting for a deadline on a clock, earliest first."""

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, asyncio.Future[None]]] = []
        self._ids = itertools.count()

    def add(self, deadline: float) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self.heap, (deadline, next(self._ids), fut))
        return fut

    def earliest(self) -> float | None:
        while self.heap and self.heap[0][2].done():
            heapq.heappop(self.heap)
        return self.heap[0][0] if self.heap else None

    def fire(self, now: float) -> int:
        fired = 0
        while self.heap and self.heap[0][0] <= now:
            _, _, fut = heapq.heappop(self.heap)
            if not fut.done():
                fut.set_result(None)
                fired += 1
        return fired


async def _wait_event(clock: Any, event: asyncio.Event, timeout: float | None) -> bool:
    if event.is_set():
        return True
    if timeout is not None and timeout <= 0:
        return False
    waiter = asyncio.ensure_future(event.wait())
    tasks: set[asyncio.Future[Any]] = {waiter}
    if timeout is not None:
        tasks.add(asyncio.ensure_future(clock.sleep(timeout)))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
    return event.is_set()


class TimeSkippingClock:
    """Real time that skips ahead while the engine has nothing to do: a week of sleeps in milliseconds, with
    real I/O in the steps.

    The clock runs at the speed of the wall clock. A :class:`~stepstone.testing.TestEngine` attaches a probe
    to it; every ``settle_s`` real seconds the clock asks the probe whether every runnable instance is idle
    (no step attempt in flight, no run loading or writing, the worker's claim loop waiting with nothing woken)
    and, if so, for the earliest wake-up an instance waits for (a sleep, a retry delay, an event-wait
    deadline). If the answer is the same after another ``settle_s`` with no clock activity in between, the
    clock jumps to that wake-up and nowhere else. Without a probe it never jumps (call :meth:`skip_to`).

    Args:
        start: the initial time, epoch seconds (default: now).
        settle_s: how long (real seconds) the engine must stay idle before a jump.
    """

    def __init__(self, start: float | None = None, *, settle_s: float = 0.002) -> None:
        self._base = time.time() if start is None else float(start)
        self._mono = time.monotonic()
        self._offset = 0.0
        self._settle_s = settle_s
        self._sleepers = _Sleepers()
        self._timer: asyncio.TimerHandle | None = None
        self._probe: IdleProbe | None = None
        self._skipper: asyncio.Task[None] | None = None
        self._activity = 0
        self.skipped = 0.0
        """Seconds of time skipped so far (virtual time that did not pass on the wall clock)."""
        self.jumps = 0
        """How many times the clock skipped ahead."""

    def _now(self) -> float:
        return self._base + (time.monotonic() - self._mono) + self._offset

    def now(self) -> float:
        """The current time: the wall clock's progress since the start, plus every skip."""
        self._activity += 1
        return self._now()

    @property
    def elapsed(self) -> float:
        """Seconds of this clock's time since it was made (real time plus skips)."""
        return self._now() - self._base

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time: real time, or less if the clock skips over it."""
        self._activity += 1
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut = self._sleepers.add(self._now() + seconds)
        self._arm()
        try:
            await fut
        finally:
            self._activity += 1

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Wait for ``event`` at most ``timeout`` seconds of this clock's time."""
        self._activity += 1
        return await _wait_event(self, event, timeout)

    def skip_to(self, when: float) -> None:
        """Jump to ``when`` (if it is ahead) and wake every sleeper whose deadline passed."""
        now = self._now()
        if when > now:
            self._offset += when - now
            self.skipped += when - now
            self.jumps += 1
        self._activity += 1
        self._fire()

    def advance(self, seconds: float) -> None:
        """Jump ``seconds`` ahead."""
        self.skip_to(self._now() + seconds)

    # -- the engine's side ---------------------------------------------------------------------------------
    def attach(self, probe: IdleProbe) -> None:
        """Start skipping ahead whenever ``probe`` names a wake-up (call inside the running loop)."""
        self._probe = probe
        if self._skipper is None or self._skipper.done():
            self._skipper = asyncio.get_running_loop().create_task(self._skip_when_idle(), name="stepstone-skip")

    async def detach(self) -> None:
        """Stop skipping ahead."""
        self._probe = None
        if self._skipper is not None:
            self._skipper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._skipper
            self._skipper = None

    async def _skip_when_idle(self) -> None:
        while True:
            await asyncio.sleep(self._settle_s)
            probe = self._probe
            if probe is None:
                return
            target = probe()
            if target is None or target <= self._now():
                continue
            seen = self._activity
            await asyncio.sleep(self._settle_s)  # still idle a moment later, with nothing touching the clock
            if self._activity != seen or self._probe is None or self._probe() != target:
                continue
            self.skip_to(target)

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        earliest = self._sleepers.earliest()
        if earliest is not None:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, earliest - self._now()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        if self._sleepers.fire(self._now()):
            self._activity += 1
        self._arm()


class FakeClock:
    """A clock that moves only when told to (:meth:`advance`), or, with ``autojump``, whenever the program
    has been quiet for ``idle_s`` real seconds.

    ``autojump`` jumps to the earliest pending deadline of any waiter, step timeouts included, so a step
    doing real I/O can see its timeout pass at once: with an engine, use :class:`TimeSkippingClock`.

    Args:
        start: the initial time, epoch seconds.
        autojump: jump to the earliest pending deadline once nothing has happened for ``idle_s`` real seconds.
        idle_s: how long (real seconds) the program must be quiet before an automatic jump.
    """

    def __init__(self, start: float = 1_800_000_000.0, *, autojump: bool = False, idle_s: float = 0.01) -> None:
        self._now = start
        self._sleepers = _Sleepers()
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
        fut = self._sleepers.add(self._now + seconds)
        self._activity += 1
        self._ensure_jumper()
        try:
            await fut
        finally:
            self._activity += 1

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Wait for ``event`` at most ``timeout`` fake seconds."""
        return await _wait_event(self, event, timeout)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline passed."""
        self._now += seconds
        self._fire()

    def next_deadline(self) -> float | None:
        """The earliest pending deadline, if any."""
        return self._sleepers.earliest()

    def _fire(self) -> None:
        self._sleepers.fire(self._now)
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
