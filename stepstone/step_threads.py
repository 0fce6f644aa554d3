"""The threads that run sync step callables: sized from the worker's concurrency, with hung threads replaced.

A sync step (every ``lambda:``) runs in one of these threads. A step that times out cannot be interrupted (Python
cannot stop a thread), so its thread is *written off*: it no longer counts against the pool's size and a fresh
thread takes its place, so a few hung steps cannot starve the steps of other instances. The written-off thread
ends when its call returns. Each job records when a thread picked it up (a step's timeout counts from then, not
while it waits for a thread) and which thread runs it (its CPU time can be read while it runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("stepstone.worker")


class Job:
    """One sync call handed to a thread: ``done`` resolves (on the loop) when the call returned or raised."""

    __slots__ = ("_loop", "abandoned", "call", "cancelled", "cpu_clock", "cpu_start", "cpu_used", "done", "started")

    def __init__(self, call: Callable[[], Any], loop: asyncio.AbstractEventLoop) -> None:
        self.call = call
        self._loop = loop
        self.done: asyncio.Future[Any] = loop.create_future()
        self.started: float | None = None
        """``time.monotonic()`` when a thread began the call; None while it waits for one."""
        self.cpu_clock: int | None = None
        """The running thread's CPU-time clock id (``time.clock_gettime``), where the platform has one."""
        self.cpu_start = 0.0
        self.cpu_used: float | None = None
        """CPU seconds the call used (``time.thread_time`` in its thread), once it returned."""
        self.cancelled = False
        self.abandoned = False

    def cpu_so_far(self) -> float | None:
        """CPU seconds the call has used up to now, read from its thread's CPU clock while it runs."""
        if self.cpu_used is not None:
            return self.cpu_used
        clock = self.cpu_clock
        if clock is None or self.started is None:
            return None
        try:
            return time.clock_gettime(clock) - self.cpu_start
        except OSError:  # the thread ended meanwhile
            return self.cpu_used

    def _run(self) -> None:
        self.cpu_start = time.thread_time()
        self.started = time.monotonic()
        value: Any = None
        error: BaseException | None = None
        try:
            value = self.call()
        except BaseException as exc:  # handed to the awaiting step, as run_in_executor does
            error = exc
        self.cpu_used = time.thread_time() - self.cpu_start
        # RuntimeError: the loop closed while the call ran (a written-off call outlived its worker).
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(_settle, self.done, value, error)


def _settle(fut: asyncio.Future[Any], value: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(value)


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class StepThreads:
    """A pool of ``size`` threads for sync steps whose timed-out calls do not keep their seat.

    Args:
        size: how many calls run at once (the worker passes its concurrency).
    """

    def __init__(self, size: int, *, name: str = "stepstone-step") -> None:
        if size < 1:
            raise ValueError(f"step thread pool size must be >= 1, got {size}")
        self.size = size
        self._name = name
        self._queue: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._live = 0
        """Threads that count against ``size`` (idle, or running a call that has not been written off)."""
        self._idle = 0
        self._pending = 0
        self._abandoned = 0
        self._serial = 0
        self._closed = False

    @property
    def abandoned(self) -> int:
        """Threads still running a call that was written off (timed out)."""
        return self._abandoned

    def submit(self, call: Callable[[], Any]) -> Job:
        """Queue ``call``; a thread starts on it as soon as one is free (a new one if below ``size``)."""
        job = Job(call, asyncio.get_running_loop())
        with self._lock:
            if self._closed:
                raise RuntimeError("the step thread pool is shut down")
            self._pending += 1
            spawn = self._pending > self._idle and self._live < self.size
            if spawn:
                self._live += 1
        self._queue.put(job)
        if spawn:
            self._spawn()
        return job

    def abandon(self, job: Job) -> None:
        """``job`` timed out: if it is still running, its thread stops counting and a new one takes its place;
        if it has not started, it never will."""
        job.cancelled = True
        if job.done.done():  # it ended as the run did: nobody reads its outcome (no "never retrieved" log)
            _retrieve(job.done)
            return
        if job.started is None or job.abandoned:
            return
        job.abandoned = True
        job.done.add_done_callback(_retrieve)  # nobody may await it any more
        with self._lock:
            self._live -= 1
            self._abandoned += 1
            spawn = self._pending > self._idle and self._live < self.size
            if spawn:
                self._live += 1
        log.warning(
            "a timed-out sync step still holds its thread (%d such thread(s) now); a new thread takes its place",
            self._abandoned,
        )
        if spawn:
            self._spawn()

    def shutdown(self) -> None:
        """Let idle threads end; threads busy with a call end when it returns."""
        with self._lock:
            self._closed = True
            count = self._live
        for _ in range(count):
            self._queue.put(None)

    def _spawn(self) -> None:
        self._serial += 1
        thread = threading.Thread(target=self._work, name=f"{self._name}-{self._serial}", daemon=True)
        thread.start()

    def _work(self) -> None:
        try:
            cpu_clock: int | None = time.pthread_getcpuclockid(threading.get_ident())
        except (AttributeError, OSError):  # not every platform has per-thread CPU clocks
            cpu_clock = None
        while True:
            with self._lock:
                self._idle += 1
            job = self._queue.get()
            with self._lock:
                self._idle -= 1
                if job is not None:
                    self._pending -= 1
            if job is None:
                return
            if job.cancelled:  # timed out (or its run ended) before a thread was free: never start it
                continue
            job.cpu_clock = cpu_clock
            job._run()
            if job.abandoned:
                with self._lock:
                    self._abandoned -= 1
                    if self._closed or self._live >= self.size:
                        return  # its replacement holds the seat: this thread is surplus
                    self._live += 1  # rejoin: the pool is below size again
