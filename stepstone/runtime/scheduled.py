"""``[triggers] crons``: the Worker's ``scheduled`` handler at each firing, beside the workflow schedules.

At each minute boundary of the engine's clock, every cron that matches that minute (UTC, as Cloudflare evaluates
them) calls ``scheduled(controller)`` on a new ``Default`` instance. Several processes running the same project
(``stepstone worker`` on many machines) fire each (cron, minute) once: the process that claims it first in the
database runs it (``claim``); the others skip it. A handler that raises is logged; the next firing runs as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from stepstone.clock import Clock
from stepstone.cron import Cron, parse_cron
from stepstone.runtime.handlers import WorkerRuntime

log = logging.getLogger("stepstone.runtime")

Claim = Callable[[str, float], Awaitable[bool]]
"""``claim(key, expires_at)``: True for the one process that may run the firing ``key``."""


@dataclass(slots=True)
class ScheduledController:
    """What ``scheduled(self, controller)`` receives (Cloudflare's ``ScheduledController``).

    Attributes:
        scheduled_time: when the firing was due, in milliseconds since the epoch (``scheduledTime`` too).
        cron: the expression that fired, as written in ``[triggers] crons``.
    """

    scheduled_time: int
    cron: str
    type: str = "scheduled"
    _no_retry: bool = field(default=False, repr=False)

    @property
    def scheduledTime(self) -> int:
        """``scheduled_time``."""
        return self.scheduled_time

    def no_retry(self) -> None:
        """Accepted: a failed firing is never retried here."""
        self._no_retry = True

    noRetry = no_retry


async def fire_crons(
    runtime: WorkerRuntime, crons: Sequence[Cron], when: datetime, *, claim: Claim | None = None
) -> list[str]:
    """Run ``scheduled`` for every cron firing in the minute of ``when``; returns the expressions run here.

    Args:
        claim: decides across processes which one runs a firing (None: this process runs every firing).
    """
    minute = when.astimezone(UTC).replace(second=0, microsecond=0)
    scheduled_ms = int(minute.timestamp() * 1000)
    ran: list[str] = []
    for cron in crons:
        if not cron.matches(minute):
            continue
        if claim is not None and not await claim(f"scheduled:{cron.expression}:{scheduled_ms}", minute.timestamp()
                                                 + 86400):  # fmt: skip
            continue
        try:
            await runtime.scheduled(ScheduledController(scheduled_ms, cron.expression))
        except Exception as exc:
            log.error("scheduled(%r) at %s raised %s: %s", cron.expression, minute.isoformat(),
                      type(exc).__name__, exc, exc_info=exc)  # fmt: skip
        ran.append(cron.expression)
    return ran


async def run_crons(
    runtime: WorkerRuntime,
    expressions: Sequence[str],
    clock: Clock,
    *,
    claim: Claim | None = None,
    on_fire: Callable[[str], None] | None = None,
) -> None:
    """Fire ``expressions`` at each minute boundary of ``clock`` until cancelled; ``on_fire(cron)`` is told of
    each firing run here. A firing's handler runs in its own task, so a slow one never delays the next minute."""
    crons = [parse_cron(e) for e in expressions]
    running: set[asyncio.Task[None]] = set()

    async def fire(at: datetime) -> None:
        for expression in await fire_crons(runtime, crons, at, claim=claim):
            if on_fire is not None:
                with contextlib.suppress(Exception):
                    on_fire(expression)

    try:
        while True:
            now = clock.now()
            next_minute = (int(now) // 60 + 1) * 60
            await clock.sleep(next_minute - now)
            task = asyncio.create_task(fire(datetime.fromtimestamp(next_minute, UTC)))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        for task in list(running):
            task.cancel()


__all__ = ["Claim", "ScheduledController", "fire_crons", "run_crons"]
