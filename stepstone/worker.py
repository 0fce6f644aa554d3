"""The worker: claims runnable instances, runs them, renews their leases, wakes for timers and signals.

A worker holds no coroutine for a hibernating instance. It sleeps until the earliest due time it knows of,
a local signal (an instance created, resumed or sent an event in this process), or the poll interval (for
work created by other processes), whichever comes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from stepstone.clock import Clock
from stepstone.errors import StorageError
from stepstone.executor import Execution, WorkflowDef
from stepstone.models import Claim, Lease
from stepstone.observe import Observer
from stepstone.run_state import LeaseWindow, TestHooks
from stepstone.step_process import StepProcesses
from stepstone.step_threads import StepThreads
from stepstone.storage.base import Storage
from stepstone.watchdog import LoopWatchdog

log = logging.getLogger("stepstone.worker")


def new_owner_id() -> str:
    """A worker identity: ``host:pid:random``, so a worker on the same host can tell a dead one."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _is_dead_local(owner: str, me: str) -> bool:
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != me.partition(":")[0] or not pid_text.isdigit() or owner == me:
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Worker:
    """Runs the instances of the given workflows.

    Args:
        storage: the database.
        clock: where time comes from.
        definitions: returns the workflows this worker runs, by name.
        concurrency: how many instances run at once on this worker.
        lease_seconds: how long a claim lasts without renewal.
        poll_interval: how often to look for work created by other processes.
        loop_block_limit: how long the event loop may go without answering before the watchdog names the
            blocking step and fails its attempt (default: the renewal interval, ``min(lease_seconds / 3, 2)``,
            but at least 1 s).
        account_concurrency: claim no instance that would make its account run more than this many at once.
    """

    def __init__(
        self,
        *,
        storage: Storage,
        clock: Clock,
        definitions: Callable[[], Mapping[str, WorkflowDef]],
        concurrency: int = 100,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        inprocess_wait_s: float = 1.0,
        purge_interval: float = 60.0,
        owner: str | None = None,
        observer: Observer | None = None,
        test_hooks: TestHooks | None = None,
        loop_block_limit: float | None = None,
        account_concurrency: int | None = None,
    ) -> None:
        self.storage = storage
        self.account_concurrency = account_concurrency
        """At most this many instances of one account run at once, over every worker (AccountLimits.concurrency)."""
        self.clock = clock
        self.definitions = definitions
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.inprocess_wait_s = inprocess_wait_s
        self.purge_interval = purge_interval
        self.owner = owner or new_owner_id()
        self.observer = observer
        """Told of every run started and finished here, and (as the run hooks) of its live steps."""
        self.test_hooks = test_hooks
        """The test engine's modifications of its runs (stepstone.testing); None for a production engine."""
        self.running: dict[int, tuple[Execution, asyncio.Task[str]]] = {}
        self.outcomes: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task[Any]] = []
        self._last_purge = 0.0
        self._purge: asyncio.Task[None] | None = None
        self._parked = 0
        self._checks: set[asyncio.Task[None]] = set()
        self._waiting = False
        self.next_due: float | None = None
        """When the earliest instance the last claim saw (not yet due) becomes runnable."""
        self.renew_interval = min(lease_seconds / 3, 2.0)
        self.loop_block_limit = loop_block_limit if loop_block_limit is not None else max(self.renew_interval, 1.0)
        self.watchdog: LoopWatchdog | None = None
        self.threads = StepThreads(concurrency)
        """The threads sync steps run in: as many as instances run at once; a timed-out step's is replaced."""
        self.processes = StepProcesses(keep_idle=min(concurrency, 8))
        """The child processes of workflows registered with ``isolation="process"`` (none until one is needed)."""

    async def start(self) -> None:
        """Release leases of dead workers on this host, then start claiming."""
        try:
            dead = [o for o in await self.storage.lease_owners() if _is_dead_local(o, self.owner)]
            if dead:
                released = await self.storage.release_owners(dead)
                log.info("released %d instance(s) held by dead worker(s) %s", released, dead)
        except StorageError as exc:
            log.warning("could not check for dead workers: %s", exc)
        await self.storage.subscribe(self._on_signal)
        self.watchdog = LoopWatchdog(
            loop=asyncio.get_running_loop(),
            storage=self.storage,
            clock=self.clock,
            lease_seconds=self.lease_seconds,
            leases=self._held,
            limit_s=self.loop_block_limit,
        )
        self.watchdog.start()
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="stepstone-claim"),
            asyncio.create_task(self._renew_loop(), name="stepstone-renew"),
        ]

    async def stop(self) -> None:
        """Stop claiming, stop running instances (they resume elsewhere or at next start)."""
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        for _, task in list(self.running.values()):
            task.cancel()
        if self._purge is not None:
            self._purge.cancel()
        pending: list[asyncio.Task[Any]] = [t for _, t in self.running.values()] + self._tasks
        if self._purge is not None:
            pending.append(self._purge)
        for task in pending:
            with contextlib.suppress(BaseException):
                await task
        self.threads.shutdown()
        self.processes.shutdown()
        if self.watchdog is not None:
            self.watchdog.stop()
        with contextlib.suppress(StorageError):
            await self.storage.release_owners([self.owner])

    def _held(self) -> list[tuple[Lease, LeaseWindow | None]]:
        """The leases of the runs held now (read by the watchdog's thread while the loop is blocked)."""
        try:
            return [(ex.lease, ex.lease_window) for ex, _ in list(self.running.values())]
        except RuntimeError:  # changed while read: the loop is running again after all
            return []

    def _park(self, delta: int) -> None:
        self._parked += delta
        if delta > 0:
            self._wake.set()

    def wake(self) -> None:
        """Something may have become runnable: look now."""
        self._wake.set()

    def _on_signal(self, pk: int, kind: str) -> None:
        """A control operation in any process (the storage's cross-process signals): look for work, and
        re-check a touched run's lease and status against the database instead of trusting the signal, so
        a late ``abort`` meant for a restarted instance's previous run cannot cancel its new one."""
        entry = self.running.get(pk)
        if kind != "new" and entry is not None:
            check = asyncio.create_task(self._check({pk: entry[0].lease}))
            self._checks.add(check)
            check.add_done_callback(self._checks.discard)
        self._wake.set()

    def signal(self, pk: int, kind: str, generation: int | None = None) -> None:
        """A control operation touched instance ``pk`` in this process: pause, resume or abort its run. An abort
        with ``generation`` (a restart's, a terminate's) stops only a run of an older generation: this worker
        may have claimed the instance's new run between the change's commit and this call."""
        entry = self.running.get(pk)
        if entry is not None:
            execution, task = entry
            if kind == "pause":
                execution.request_pause()
            elif kind == "resume":
                execution.cancel_pause()
            elif kind == "abort" and (generation is None or execution.lease.generation < generation):
                task.cancel()
        self._wake.set()

    @property
    def idle(self) -> bool:
        """The claim loop is waiting for work and nothing has woken it (stepstone.testing's clock reads it)."""
        return self._waiting and not self._wake.is_set()

    @property
    def busy(self) -> int:
        """How many instances are running now."""
        # Instances waiting in process for a short timer do not count, as waiting instances don't.
        return len(self.running) - self._parked

    async def _purge_expired(self, now: float) -> None:
        try:
            await self.storage.purge_expired(now=now)
        except StorageError as exc:
            log.warning("retention purge failed (%s); next try in %.0fs", exc, self.purge_interval)

    async def _claim_loop(self) -> None:
        backoff = 0.05
        while not self._stopping:
            self._wake.clear()
            defs = self.definitions()
            free = self.concurrency - self.busy
            now = self.clock.now()
            sent = time.monotonic()
            try:
                result = await self.storage.claim(
                    owner=self.owner,
                    now=now,
                    lease_seconds=self.lease_seconds,
                    limit=free,
                    workflows=list(defs),
                    account_concurrency=self.account_concurrency,
                )
                if now - self._last_purge >= self.purge_interval and (self._purge is None or self._purge.done()):
                    # in the background: a purge of many instances never holds up claims
                    self._last_purge = now
                    self._purge = asyncio.create_task(self._purge_expired(now), name="stepstone-purge")
                backoff = 0.05
            except StorageError as exc:
                log.warning("claim failed (%s); retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if result.takeovers and self.observer is not None:
                self.observer.claimed(takeovers=result.takeovers)
            for claim in result.claims:
                definition = defs.get(claim.instance.workflow)
                if definition is None:  # pragma: no cover - claims are filtered by workflow
                    continue
                self._start(definition, claim, LeaseWindow(self.lease_seconds, sent))
            if free > 0 and len(result.claims) == free:
                continue
            timeout = self.poll_interval
            if result.next_due is not None:
                timeout = min(timeout, max(0.0, result.next_due - self.clock.now()))
            self.next_due = result.next_due
            self._waiting = True
            try:
                await self.clock.wait(self._wake, timeout)
            finally:
                self._waiting = False

    def _start(self, definition: WorkflowDef, claim: Claim, window: LeaseWindow) -> None:
        execution = Execution(
            storage=self.storage,
            clock=self.clock,
            definition=definition,
            claim=claim,
            inprocess_wait_s=self.inprocess_wait_s,
            on_park=self._park,
            hooks=self.observer,
            lease_window=window,
            test_hooks=self.test_hooks,
            threads=self.threads,
            processes=self.processes,
        )
        pk = claim.instance.pk
        # The run's task copies this context: what the observer sets in it (a trace span) spans the whole run.
        context = contextvars.copy_context()
        if self.observer is not None:
            context.run(self.observer.run_started, claim, now=self.clock.now())
        name = f"stepstone-run-{claim.instance.id}"
        task = asyncio.get_running_loop().create_task(execution.execute(), name=name, context=context)
        self.running[pk] = (execution, task)
        task.add_done_callback(lambda t: self._done(pk, execution, t))

    def _done(self, pk: int, execution: Execution, task: asyncio.Task[str]) -> None:
        current = self.running.get(pk)
        if current is not None and current[0] is execution:
            del self.running[pk]
        if task.cancelled():
            outcome = "cancelled"
        elif task.exception() is not None:
            exc = task.exception()
            outcome = "failed"
            log.error("execution of instance %s failed inside the engine: %r", execution.claim.instance.id, exc)
        else:
            outcome = task.result()
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if self.observer is not None:
            self.observer.run_finished(execution.claim, outcome, now=self.clock.now(), error=execution.error)
        if execution.lease_window is not None and execution.lease_window.release and not self._stopping:
            release = asyncio.get_running_loop().create_task(self._release(execution.lease), name="stepstone-release")
            self._checks.add(release)
            release.add_done_callback(self._checks.discard)
        self._wake.set()

    async def _release(self, lease: Lease) -> None:
        """Give up a lease the run could not keep confirmed, retrying while the database takes no writes, so the
        instance is claimable at once (here or elsewhere) instead of when the lease runs out. The release is
        fenced: it changes nothing once another worker holds the instance."""
        delay = 0.05
        while not self._stopping:
            try:
                await self.storage.release(lease)
            except StorageError as exc:
                log.debug("releasing the lease of instance %d failed (%s); retrying in %.2fs", lease.pk, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            log.info("released the lease of instance %d", lease.pk)
            self._wake.set()
            return

    async def _renew_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.renew_interval)
            if not self.running:
                continue
            await self._check({pk: ex.lease for pk, (ex, _) in self.running.items()})

    async def _check(self, leases: dict[int, Lease]) -> None:
        """Renew these runs' leases; stop a run whose lease is gone, pause or unpause as its status says."""
        sent = time.monotonic()
        try:
            states = await self.storage.renew(leases=list(leases.values()), until=self.clock.now() + self.lease_seconds)
        except StorageError as exc:
            log.warning("lease renewal failed: %s", exc)
            return
        for pk, lease_state in states.items():
            entry = self.running.get(pk)
            if entry is None or entry[0].lease != leases[pk]:
                continue
            execution, task = entry
            if not lease_state.held:
                task.cancel()
                continue
            if execution.lease_window is not None:
                execution.lease_window.confirmed(sent)
            if lease_state.status == "waitingForPause":
                execution.request_pause()
            elif lease_state.status == "running":
                execution.cancel_pause()
