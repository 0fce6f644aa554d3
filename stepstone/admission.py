"""Whether instances may be created now: the creation rates (per workflow, per account) and the maximum of
queued instances per workflow (docs/engine.md, "Limits"). Every create, batch and restart asks first.

The rates are token buckets of this process (:class:`~stepstone.limits.CreationRate`) on the engine's clock. The
queued count is read from the database at most once a second per workflow; in between this process subtracts its
own creates from it, so the limit is exact for one process and may be passed by what others create in that second.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from stepstone.errors import LimitExceededError, RateLimitedError
from stepstone.limits import AccountLimits, CreationRate, Limits
from stepstone.storage.base import Storage

RATE_LIMITED: Final = 971
"""Cloudflare's v4 API code for a request refused by a rate limit (HTTP 429)."""
QUEUE_FULL: Final = 10411
"""stepstone's code for a create refused at the queued-instance limit (Cloudflare documents the limit, no code)."""
QUEUED_RECOUNT_S: Final = 1.0
"""How long a count of queued instances is trusted: within it, this process's creates are subtracted from it."""


@dataclass(slots=True)
class Admission:
    """One process's state for :func:`admit`."""

    rates: CreationRate = field(default_factory=CreationRate)
    """The creation-rate buckets, per workflow and per account."""
    queued: dict[tuple[str, str], tuple[int, float]] = field(default_factory=dict)
    """Per (account, workflow): how many more may be queued before counting again, and when it was counted."""


async def admit(
    state: Admission,
    storage: Storage,
    limits: Limits,
    account_limits: AccountLimits,
    account: str,
    workflow: str,
    n: int,
    now: float,
) -> None:
    """Check that ``n`` more instances of ``workflow`` may be created now, and count them.

    Raises:
        LimitExceededError: ``n`` is more than a creation rate allows in one call (retrying cannot help).
        RateLimitedError: a creation rate (code 971) or the queued-instance limit (code 10411) would be passed;
            nothing was counted; retry after ``retry_after`` seconds.
    """
    rates = [
        (rate, key, what)
        for rate, key, what in (
            (limits.creation_rate, ("workflow", account, workflow), f"workflow {workflow!r}"),
            (account_limits.creation_rate, ("account", account), f"account {account!r}"),
        )
        if rate is not None
    ]
    for rate, key, what in rates:
        if n > CreationRate.burst(rate):
            raise LimitExceededError(
                f"creating {n} instances at once exceeds the creation rate of {rate:g} instances per second "
                f"for {what}: create them in smaller batches"
            )
        wait = state.rates.wait_needed(key, rate, n, now)
        if wait > 0:
            raise RateLimitedError(
                f"More than {rate:g} instances per second created for {what}. Please wait and consider "
                f"throttling your request speed (retry in {wait:.3g} s)",
                code=RATE_LIMITED,
                retry_after=wait,
            )
    cap = limits.max_queued_instances
    if cap is not None:
        key = (account, workflow)
        budget, counted = state.queued.get(key, (0, -1.0))
        if budget < n or now - counted > QUEUED_RECOUNT_S or now < counted:
            queued = await storage.count_queued(account, workflow)
            budget, counted = cap - queued, now
            if budget < n:
                state.queued[key] = (budget, counted)
                raise RateLimitedError(
                    f"workflow {workflow!r} has {queued} queued instances: creating {n} more would exceed the "
                    f"maximum of {cap} queued instances. Please wait until queued instances start",
                    code=QUEUE_FULL,
                    retry_after=QUEUED_RECOUNT_S,
                )
        state.queued[key] = (budget - n, counted)
    for rate, key, _ in rates:
        state.rates.take(key, rate, n, now)
