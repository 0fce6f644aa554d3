"""Where time comes from.

Every wait in the engine goes through a :class:`Clock`, so tests can run a week of sleeps in milliseconds
with :class:`stepstone.testing.FakeClock`. Times are epoch seconds as floats.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """A source of time and of timed waits."""

    def now(self) -> float:
        """The current time, in epoch seconds."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""
        ...

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Wait until ``event`` is set (True) or ``timeout`` seconds of this clock pass (False)."""
        ...


class SystemClock:
    """The wall clock."""

    def now(self) -> float:
        """The current time, in epoch seconds."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """Sleep in real time."""
        await asyncio.sleep(max(0.0, seconds))

    async def wait(self, event: asyncio.Event, timeout: float | None) -> bool:
        """Wait for ``event`` at most ``timeout`` real seconds."""
        if event.is_set():
            return True
        if timeout is not None and timeout <= 0:
            return False
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        return True
