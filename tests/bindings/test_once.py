"""claim_once: one caller per key across processes until the claim expires."""

from __future__ import annotations

import asyncio

from stepstone.storage import binding_store

from .conftest import Opener


async def test_one_caller_wins_per_key_until_expiry(opener: Opener) -> None:
    one, two = binding_store(await opener()), binding_store(await opener())
    wins = await asyncio.gather(
        *(s.claim_once("cron:* * * * *:1000", now=100.0, expires_at=200.0) for s in (one, two, one, two))
    )
    assert sorted(wins) == [False, False, False, True]
    assert await two.claim_once("cron:* * * * *:1060", now=100.0, expires_at=200.0) is True  # another key
    assert await one.claim_once("cron:* * * * *:1000", now=199.0, expires_at=300.0) is False
    assert await two.claim_once("cron:* * * * *:1000", now=200.0, expires_at=300.0) is True  # expired: taken over
