"""A worker process for the blob crash test: runs the blob workflows on the given database until killed.

Usage: python -m tests.blob_worker DATABASE_URL
"""

from __future__ import annotations

import asyncio
import sys

from stepstone import Engine
from tests.blob_workflows import BLOB_WORKFLOWS


async def main(url: str) -> None:
    async with Engine(url, lease_seconds=2.0, poll_interval=0.05) as engine:
        for name, cls in BLOB_WORKFLOWS.items():
            engine.register(cls, name=name)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
