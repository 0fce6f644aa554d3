"""An async step that blocks the event loop longer than the lease, with two workers sharing the work."""

from __future__ import annotations

import pytest

from stepstone import Engine
from stepstone.testing import wait_for_status
from tests.faults.conftest import Workers, read_log
from tests.faults.worker import Blocky

pytestmark = pytest.mark.slow


async def test_a_loop_blocked_past_the_lease_fails_the_attempt_instead_of_livelocking(workers: Workers) -> None:
    # Today's livelock: the block (3 s) outlasts the lease (2 s), the other worker takes over and runs the same
    # blocking attempt, loses the lease in turn, and so on, never using the retry budget. Now the blocked worker's
    # watchdog keeps the lease, the attempt fails with EventLoopBlockedError, and the retries run.
    for _ in range(2):
        workers.start()
    async with Engine(workers.url, worker=False) as client:
        inst = await client.register(Blocky, name="blocky").create(id="b")
        status = await wait_for_status(inst, "complete", "errored", timeout=60)
        assert status.status == "complete" and status.output == "ok on attempt 3"
        tries = (await inst.describe())["steps"][0]["attempts"]
    assert [a["success"] for a in tries] == [False, False, True]
    for failed in tries[:2]:
        assert failed["error"]["name"] == "EventLoopBlockedError"
        assert failed["error"]["message"].startswith('step "blocky-1" blocked the event loop for ')
    # each attempt ran once, on one worker: no takeover re-ran a blocked attempt
    assert sorted(e[3] for e in read_log(workers.log) if e[2] == "b") == ["blocky-1", "blocky-2", "blocky-3"]
