"""Workflows whose steps stream large outputs into the blob store, for the blob tests (in process and in the
server process of :mod:`tests.server_process`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from typing import Any

from stepstone import WorkflowEntrypoint

MIB = 1 << 20
PATTERN = bytes(range(256)) * 4096
"""One MiB; every chunk a producer yields is this same object, so producing allocates nothing."""

FAST = {"retries": {"limit": 5, "delay": 20, "backoff": "constant"}}


def expected_sha256(mib: int) -> str:
    """The digest of ``mib`` chunks of :data:`PATTERN`."""
    digest = hashlib.sha256()
    for _ in range(mib):
        digest.update(PATTERN)
    return digest.hexdigest()


async def digest_of(stream: Any) -> tuple[int, str]:
    """Size and sha256 of what an async iterable of bytes yields, a chunk at a time."""
    digest, n = hashlib.sha256(), 0
    async for chunk in stream:
        digest.update(chunk)
        n += len(chunk)
    return n, digest.hexdigest()


class BigOut(WorkflowEntrypoint):
    """Streams ``params["mib"]`` MiB from an async generator, hibernates until a ``go`` event, then reads its
    output back on the replay: the output is ``{"live", "type", "size", "read", "sha256"}``."""

    async def run(self, event: Any, step: Any) -> Any:
        mib = int(event.payload["mib"])

        async def produce() -> AsyncIterator[bytes]:
            for _ in range(mib):
                yield PATTERN

        out = await step.do("produce", FAST, produce)
        await step.wait_for_event("go", "go", timeout="1 hour")
        n, sha = await digest_of(out)
        return {"type": type(out).__name__, "size": out.size, "read": n, "sha256": sha}


class SlowOut(WorkflowEntrypoint):
    """Streams 8 MiB; after 3 chunks it waits for the file ``params["release"]`` to exist (a test kills the
    worker there), logging each chunk to ``params["log"]``."""

    async def run(self, event: Any, step: Any) -> Any:
        log, release = event.payload["log"], event.payload["release"]

        async def produce() -> AsyncIterator[bytes]:
            for i in range(8):
                if i == 3:
                    while not os.path.exists(release):
                        await asyncio.sleep(0.02)
                yield PATTERN
                with open(log, "a") as f:
                    f.write(f"{os.getpid()} {i}\n")

        out = await step.do("produce", FAST, produce)
        n, sha = await digest_of(out)
        return {"size": n, "sha256": sha}


BLOB_WORKFLOWS: dict[str, type[WorkflowEntrypoint]] = {"bigout": BigOut, "slowout": SlowOut}
