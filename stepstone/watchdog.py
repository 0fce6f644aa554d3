"""The event-loop watchdog: a thread that notices the worker's loop not answering and names the culprit.

Everything a worker does for its instances (renewing leases, committing steps, running async steps) happens on
one event loop. An ``async def`` step that blocks it (``time.sleep``, CPU-bound work, a blocking driver) stops
all of that. Every ``tick`` the watchdog asks the loop for a heartbeat; when the loop has not answered for
``limit_s``:

- it finds the step on the loop thread's stack (the ``run_do`` frame and its attempt slot) and logs it by name
  as the culprit, once per block;
- it marks that attempt as having blocked the loop, so it fails with ``EventLoopBlockedError`` (or times out)
  when it returns, and its retries run as for any failure;
- it renews the worker's leases itself, from its own thread and its own database connection, so a block longer
  than the lease does not hand the instances to another worker (which would run the same blocking step, lose
  its lease in turn, and so on, forever). It stops renewing once the block outlasts the culprit's timeout, so
  the innocent instances of a worker stuck for good continue elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

from stepstone.clock import Clock
from stepstone.errors import StorageError
from stepstone.models import Lease
from stepstone.run_state import LeaseWindow, RunState
from stepstone.step_call import AttemptSlot
from stepstone.step_do import run_do
from stepstone.storage.base import Storage

log = logging.getLogger("stepstone.worker")

_RUN_DO = run_do.__code__


def _culprit(frame: FrameType | None) -> tuple[AttemptSlot | None, RunState | None, str]:
    """The attempt running on a blocked loop (if it is a step) and where the loop thread is now."""
    if frame is None:
        return None, None, "?"
    where = f"{frame.f_code.co_name} at {frame.f_code.co_filename}:{frame.f_lineno}"
    while frame is not None:
        if frame.f_code is _RUN_DO:
            local = frame.f_locals
            slot, state = local.get("slot"), local.get("state")
            if isinstance(slot, AttemptSlot) and isinstance(state, RunState):
                return slot, state, where
            return None, None, where
        frame = frame.f_back
    return None, None, where


class LoopWatchdog:
    """Watches one event loop from a daemon thread (see the module docstring).

    Args:
        loop: the worker's event loop (the watchdog must be started on its thread).
        storage: where it renews leases while the loop is blocked (``renew_blocking``).
        clock: the worker's clock (lease expiry times are in its time).
        lease_seconds: the worker's lease length.
        leases: the leases (and lease windows) of the runs the worker holds now.
        limit_s: how long the loop may go without answering before the block counts against the step (its
            leases are renewed from here once it has not answered for the renewal interval, whatever the limit).
        tick: how often the loop is asked for a heartbeat.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        storage: Storage,
        clock: Clock,
        lease_seconds: float,
        leases: Callable[[], list[tuple[Lease, LeaseWindow | None]]],
        limit_s: float,
        tick: float = 0.1,
    ) -> None:
        self.loop = loop
        self.storage = storage
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.leases = leases
        self.limit_s = limit_s
        self.tick = min(tick, limit_s / 2, lease_seconds / 6)
        self.blocks = 0
        """How many blocks longer than ``limit_s`` it has seen."""
        self._loop_thread = threading.get_ident()
        self._stop = threading.Event()
        self._asked = 0.0
        self._answered = 0.0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start watching (call on the loop's thread)."""
        self._loop_thread = threading.get_ident()
        self._answered = self._asked = time.monotonic()
        self._thread = threading.Thread(target=self._watch, name="stepstone-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop watching; returns at once (the thread ends within a tick)."""
        self._stop.set()

    def _beat(self, asked: float) -> None:
        self._answered = asked

    def _watch(self) -> None:
        reported = False
        renewed = 0.0
        gave_up = False
        renew_every = min(self.lease_seconds / 3, 2.0)
        while not self._stop.wait(self.tick):
            now = time.monotonic()
            if self._answered >= self._asked:
                if reported:
                    log.info("the event loop answers again after %.1fs", now - self._asked)
                reported, gave_up = False, False
                self._asked = renewed = now
                try:
                    self.loop.call_soon_threadsafe(self._beat, now)
                except RuntimeError:  # the loop is closed
                    return
                continue
            blocked = now - self._asked
            slot: AttemptSlot | None = None
            if blocked >= self.limit_s:
                slot, state, where = _culprit(sys._current_frames().get(self._loop_thread))
                if slot is not None:
                    slot.blocked_s = max(slot.blocked_s, blocked)
                if not reported:
                    reported = True
                    self.blocks += 1
                    self._report(slot, state, where, blocked)
            # The loop's own renewals are missed from here on: renew for it (also when it is merely slow).
            if gave_up or now - renewed < renew_every:
                continue
            if slot is not None and blocked > max(slot.timeout_s, self.lease_seconds):
                gave_up = True
                log.error(
                    "the event loop has been blocked for %.0fs by step %r, longer than its timeout: its leases are "
                    "no longer renewed, so other workers take over this worker's instances",
                    blocked,
                    slot.display,
                )
                continue
            renewed = now
            self._renew()

    def _report(self, slot: AttemptSlot | None, state: RunState | None, where: str, blocked: float) -> None:
        if slot is not None and state is not None:
            log.warning(
                "the event loop has not answered for %.1fs: step %r of instance %s/%s blocks it (in %s). An async "
                "def step must not block; make it a def step (def steps run in threads) or await "
                "asyncio.to_thread(...); this attempt fails",
                blocked,
                slot.display,
                state.workflow,
                state.instance_id,
                where,
            )
        else:
            log.warning(
                "the event loop has not answered for %.1fs; it is blocked in %s (not in a step)", blocked, where
            )

    def _renew(self) -> None:
        held = self.leases()
        if not held:
            return
        sent = time.monotonic()
        try:
            kept = self.storage.renew_blocking(
                [lease for lease, _ in held], until=self.clock.now() + self.lease_seconds
            )
        except StorageError as exc:
            log.warning("lease renewal from the watchdog failed: %s", exc)
            return
        for lease, window in held:
            if lease.pk in kept and window is not None:
                window.confirmed(sent)
        log.info("renewed %d lease(s) from the watchdog while the event loop is blocked", len(kept))
