"""One attempt's call of a step function, under its timeout and CPU limit, on the loop or in a step thread.

- An ``async def`` step runs on the event loop. Its timeout holds even when it blocks the loop (``time.sleep``
  inside ``async def``): a result that arrives after the deadline is a timeout, not a success. A block longer
  than the worker's limit, seen by the watchdog (``stepstone.watchdog``), fails the attempt with
  :class:`EventLoopBlockedError` naming the step and how long it blocked.
- A sync step runs in the worker's :class:`~stepstone.step_threads.StepThreads`. Its timeout counts from when a
  thread picks it up, not while it waits for one; on a timeout (or when the run ends) its thread is written off
  and replaced. With ``limits.cpu_ms`` its thread's CPU time is bounded too (Cloudflare's per-step CPU limit).
  Under ``isolation="process"`` that thread waits for a child process (:mod:`stepstone.step_process`), which
  is killed on a timeout, so the attempt really stops.
- The attempts' timers are shared per event loop, not armed per attempt: :class:`Deadlines` (async attempts'
  timeouts, one heap behind one timer) and :class:`StartMarks` (the write that records an attempt still running
  after :data:`ATTEMPT_MARK_S`). A timer per attempt was a tenth of a step's cost for deadlines that rarely come.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import heapq
import inspect
import math
import threading
import time
import types
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

from stepstone.clock import SystemClock
from stepstone.errors import CPUTimeLimitError, EventLoopBlockedError, WorkflowTimeoutError
from stepstone.models import StepRecord
from stepstone.run_state import RunState
from stepstone.step_process import ProcessCall
from stepstone.step_threads import Job, StepThreads

CPU_LIMIT_MESSAGE: Final[str] = "Worker exceeded CPU time limit."
"""Cloudflare's message for a Worker invocation (a step) over its ``limits.cpu_ms`` (error 1102)."""

_fallback_threads: StepThreads | None = None
_local = threading.local()


class Deadlines:
    """The timeouts of the async attempts running on one event loop, behind one timer at the earliest deadline.

    A timer per attempt (``asyncio.timeout_at``) costs a context copy, a heap push and a cancel for a deadline
    that almost never comes (the default is ten minutes), and the cancelled timers stay in the loop's heap until
    it is rebuilt. Here an attempt adds ``[deadline, seq, timeout]`` to a heap of our own and clears the entry
    when it ends; the one timer expires the timeouts that are due (``Timeout.reschedule`` to a past time, so
    asyncio's own machinery cancels the task and raises ``TimeoutError``), and cleared entries are dropped as
    they reach the top or when they outnumber the live ones.
    """

    __slots__ = ("_armed_at", "_heap", "_live", "_seq", "_timer", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[list[Any]] = []
        self._live = 0
        self._seq = 0
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at = math.inf

    def add(self, when: float, timeout: asyncio.Timeout) -> list[Any]:
        """Expire ``timeout`` (entered) at loop time ``when`` unless :meth:`done` is called first."""
        self._seq += 1
        entry = [when, self._seq, timeout]
        heapq.heappush(self._heap, entry)
        self._live += 1
        if when < self._armed_at:
            self._arm(when)
        return entry

    def done(self, entry: list[Any]) -> None:
        """The attempt of ``entry`` ended: its timeout must not fire."""
        entry[2] = None
        self._live -= 1
        if len(self._heap) > 2 * self._live + 1024:
            self._heap = [e for e in self._heap if e[2] is not None]
            heapq.heapify(self._heap)

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._due)
        self._armed_at = when

    def _due(self) -> None:
        self._timer, self._armed_at = None, math.inf
        heap, now = self._heap, self.loop.time()
        while heap and (heap[0][2] is None or heap[0][0] <= now):
            when, _, timeout = heapq.heappop(heap)
            if timeout is not None:
                with contextlib.suppress(RuntimeError):  # it is exiting already
                    timeout.reschedule(when)
        if heap:
            self._arm(heap[0][0])


ATTEMPT_MARK_S: Final = 0.05
"""How long an attempt runs before it is recorded as started (see :func:`mark_start_later`)."""


class StartMarks:
    """The attempts of every run on one event loop waiting to be recorded as started, behind one timer.

    Entries ``[due, state, step]`` are added in start order, so in due order: a deque, its head the next due.
    An attempt that ends first clears its step; cleared entries are dropped as they reach the head. One timer
    for the loop, not one per attempt or per run, whatever the number of instances running.
    """

    __slots__ = ("_marks", "_timer", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._marks: deque[list[Any]] = deque()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, state: RunState, step: StepRecord) -> list[Any]:
        due = self.loop.time() + ATTEMPT_MARK_S
        entry: list[Any] = [due, state, step]
        self._marks.append(entry)
        if self._timer is None:
            self._timer = self.loop.call_at(due, self._due)
        return entry

    def _due(self) -> None:
        now, marks = self.loop.time(), self._marks
        while marks:
            due, state, step = marks[0]
            if step is not None and due > now:
                break
            marks.popleft()
            if step is not None:
                state.write_nowait(step)
        self._timer = self.loop.call_at(marks[0][0], self._due) if marks else None


def mark_start_later(state: RunState, step: StepRecord, loop: asyncio.AbstractEventLoop) -> list[Any]:
    """Record ``step`` (its attempt started) if that attempt still runs :data:`ATTEMPT_MARK_S` from now, so a
    crash during it counts against the retry budget; quick attempts skip that write (their crash reruns the
    attempt). Clear the returned entry's step (``entry[2] = None``) when the attempt ends."""
    return _of_loop(StartMarks, loop).add(state, step)


_Timers = TypeVar("_Timers", Deadlines, StartMarks)


def _of_loop(kind: type[_Timers], loop: asyncio.AbstractEventLoop) -> _Timers:
    """This thread's :class:`Deadlines` or :class:`StartMarks` for ``loop`` (a new one when the loop changed)."""
    found: _Timers | None = getattr(_local, kind.__name__, None)
    if found is None or found.loop is not loop:
        found = kind(loop)
        setattr(_local, kind.__name__, found)
    return found


def _deadlines(loop: asyncio.AbstractEventLoop) -> Deadlines:
    return _of_loop(Deadlines, loop)


class AttemptSlot:
    """One attempt in flight, as the watchdog, the timeout and the next retry see it.

    The watchdog finds it (a local of ``run_do``) on the stack of a blocked loop and records the block in
    ``blocked_s``; ``job`` is the attempt's call in a step thread, if it is a sync step.
    """

    __slots__ = ("blocked_s", "display", "job", "timeout_s")

    def __init__(self, display: str, timeout_s: float) -> None:
        self.display = display
        self.timeout_s = timeout_s
        self.blocked_s = 0.0
        self.job: Job | None = None


def _threads(state: RunState) -> StepThreads:
    global _fallback_threads
    if state.threads is not None:
        return state.threads
    if _fallback_threads is None:  # a run outside a worker (tests building a RunState by hand)
        _fallback_threads = StepThreads(32)
    return _fallback_threads


def _is_async(fn: Callable[..., Any]) -> bool:
    """``inspect.iscoroutinefunction``, read straight from a plain function's code flags (every step asks)."""
    if type(fn) is types.FunctionType:
        return bool(fn.__code__.co_flags & inspect.CO_COROUTINE)
    return inspect.iscoroutinefunction(fn)


def _timed_out(ms: float) -> WorkflowTimeoutError:
    return WorkflowTimeoutError(f"Execution timed out after {int(ms)}ms")


async def call_step(
    state: RunState,
    fn: Callable[..., Any],
    call: Callable[[], Any],
    slot: AttemptSlot,
    timeout_ms: float,
) -> Any:
    """Run one attempt of ``fn`` (already bound to its arguments as ``call``) to its value or its error."""
    timeout_s = timeout_ms / 1000
    if _is_async(fn):
        return await _on_loop(state, call(), slot, timeout_s, timeout_ms)
    threads = _threads(state)
    cpu_ms = state.limits.cpu_ms
    cpu_s = None if cpu_ms is None else cpu_ms / 1000
    process: ProcessCall | None = None
    if state.processes is not None:
        # isolation="process": the thread only waits for a child process, which enforces cpu_ms itself.
        process = state.processes.prepare(slot.display, fn, call, cpu_s, CPU_LIMIT_MESSAGE)
        job = threads.submit(process.run)
        process.attach(job)
        cpu_s = None
    else:
        # The thread runs in this task's context, so its logs and prints carry the instance id and its trace span.
        job = threads.submit(functools.partial(contextvars.copy_context().run, call))
    slot.job = job
    try:
        if isinstance(state.clock, SystemClock):
            await _wait_job(job, threads, timeout_s, timeout_ms, cpu_s)
        else:
            await _wait_job_fake(state, job, threads, timeout_s, timeout_ms)
    except BaseException:
        if process is not None:
            process.kill()  # its side effects stop here; the thread waiting for it ends at once
        threads.abandon(job)  # timed out, over its CPU limit, or the run ended: the thread is written off
        raise
    failed = job.done.exception()
    if cpu_s is not None and job.cpu_used is not None and job.cpu_used > cpu_s:
        raise CPUTimeLimitError(CPU_LIMIT_MESSAGE) from failed
    value = job.done.result()
    if inspect.isawaitable(value):  # a sync callable that returned a coroutine (``lambda: fetch()``)
        assert job.started is not None
        left = timeout_s - (time.monotonic() - job.started)
        return await _on_loop(state, value, slot, max(left, 0.0), timeout_ms)
    return value


async def _wait_job(job: Job, threads: StepThreads, timeout_s: float, ms: float, cpu_s: float | None) -> None:
    """Wait for the job; the timeout counts from when a thread started it; CPU is read from its thread."""
    while True:
        started = job.started
        if started is None:
            wait = timeout_s  # still waiting for a thread: its timeout has not begun
        else:
            wait = timeout_s - (time.monotonic() - started)
            if wait <= 0:
                raise _timed_out(ms)
            if cpu_s is not None:
                used = job.cpu_so_far()
                if used is not None and used > cpu_s:
                    raise CPUTimeLimitError(CPU_LIMIT_MESSAGE)
                # CPU time grows no faster than wall time: look again when the limit could first be reached.
                wait = min(wait, cpu_s - (used or 0.0) + 0.001)
        done, _ = await asyncio.wait((job.done,), timeout=wait)
        if done:
            return


async def _wait_job_fake(state: RunState, job: Job, threads: StepThreads, timeout_s: float, ms: float) -> None:
    """The same under a test clock: the timeout is in the clock's time, counted from submission."""
    timer = asyncio.ensure_future(state.clock.sleep(timeout_s))
    try:
        done, _ = await asyncio.wait({job.done, timer}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        timer.cancel()
    if job.done not in done:
        raise _timed_out(ms)


async def _on_loop(state: RunState, aw: Awaitable[Any], slot: AttemptSlot, timeout_s: float, ms: float) -> Any:
    if not isinstance(state.clock, SystemClock):
        task = asyncio.ensure_future(aw)
        timer = asyncio.ensure_future(state.clock.sleep(timeout_s))
        try:
            done, _ = await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
        if task in done:
            return task.result()
        task.cancel()
        raise _timed_out(ms)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    deadlines = _deadlines(loop)
    timeout = asyncio.timeout(None)  # no timer of its own: the loop's Deadlines expire it
    try:
        async with timeout:
            entry = deadlines.add(deadline, timeout)
            try:
                value = await aw
            finally:
                deadlines.done(entry)
    except TimeoutError:
        if timeout.expired():
            raise _timed_out(ms) from None
        raise
    if loop.time() > deadline:  # it blocked the loop past its deadline, so the timer could not fire
        raise _timed_out(ms)
    if slot.blocked_s > 0:
        raise EventLoopBlockedError(
            f'step "{slot.display}" blocked the event loop for {slot.blocked_s:.1f}s: an async def step must not '
            "block (time.sleep, CPU-bound work, blocking I/O); make it a def step, which runs in a thread, or "
            "await asyncio.to_thread(...) inside it"
        )
    return value
