"""Wakes the readers of instance event streams when events may have been committed.

A backend rings the bell with the instances whose events a commit wrote (in this process, right after the
commit) or with everything (another process committed something: the backend's signal). A reader holds a
:class:`StreamWaiter` for its instance from before it reads until it stops, so a ring that comes between its
read and its wait is not lost: the next wait returns at once. Ringing from another thread hands over to the
event loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterable


class StreamWaiter:
    """One reader's wake-ups for one instance; :meth:`close` it when done."""

    def __init__(self, bell: Bell, pk: int) -> None:
        self._bell = bell
        self.pk = pk
        self.rung = False
        self._fut: asyncio.Future[None] | None = None

    def ring(self) -> None:
        self.rung = True
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until rung since the previous wait (at once if it already was), or ``timeout`` seconds."""
        if not self.rung:
            self._fut = asyncio.get_running_loop().create_future()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._fut), timeout)
            finally:
                self._fut = None
        self.rung = False

    def close(self) -> None:
        """Stop receiving wake-ups."""
        self._bell._remove(self)


class Bell:
    """The stream waiters of one storage, by instance."""

    def __init__(self) -> None:
        self._waiters: dict[int, set[StreamWaiter]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.on_first_waiter: Callable[[], None] | None = None
        """Called when a waiter registers while none were waiting (a backend starts watching other processes)."""

    @property
    def waiting(self) -> bool:
        """Whether anyone waits (a backend polls for other processes' events only then)."""
        return bool(self._waiters)

    def waiter(self, pk: int) -> StreamWaiter:
        """Register a reader of instance ``pk``'s stream (call on the event loop)."""
        self._loop, self._loop_thread = asyncio.get_running_loop(), threading.get_ident()
        first = not self._waiters
        waiter = StreamWaiter(self, pk)
        self._waiters.setdefault(pk, set()).add(waiter)
        if first and self.on_first_waiter is not None:
            self.on_first_waiter()
        return waiter

    def _remove(self, waiter: StreamWaiter) -> None:
        group = self._waiters.get(waiter.pk)
        if group is not None:
            group.discard(waiter)
            if not group:
                del self._waiters[waiter.pk]

    def ring(self, pks: Iterable[int] | None) -> None:
        """Wake the waiters of these instances (None: every waiter); callable from any thread."""
        if not self._waiters or self._loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._ring(pks)
        else:
            pending = None if pks is None else list(pks)
            with contextlib.suppress(RuntimeError):  # the loop closed
                self._loop.call_soon_threadsafe(self._ring, pending)

    def _ring(self, pks: Iterable[int] | None) -> None:
        if pks is None:
            groups = list(self._waiters.values())
        else:
            groups = [self._waiters[pk] for pk in set(pks) if pk in self._waiters]
        for group in groups:
            for waiter in list(group):
                waiter.ring()
