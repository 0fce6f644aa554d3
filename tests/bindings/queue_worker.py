"""A queue consumer process for the multi-worker and crash tests.

    python -m tests.bindings.queue_worker URL RECORD_FILE [--hang N] [--lease SECONDS]

Consumes ``jobs`` (batches of 10, no batch timeout, 2 retries, dead letters to ``jobs-dlq``). Each delivery
appends ``n attempts pid`` to RECORD_FILE. A body ``{"n": n, "fail": "always"}`` is retried every time, ``"once"``
on its first delivery only; the others are acked. With ``--hang N`` the handler writes ``hang`` and blocks
forever when it meets message N (so a SIGKILL lands mid-batch).
"""

from __future__ import annotations

import argparse
import asyncio
import os

from stepstone.bindings.config import QueueConsumerConfig
from stepstone.bindings.queues import MessageBatch, QueueConsumers
from stepstone.clock import SystemClock
from stepstone.storage import binding_store, storage_for_url

CONSUMER = QueueConsumerConfig(
    "jobs", max_batch_size=10, max_batch_timeout=0, max_retries=2, dead_letter_queue="jobs-dlq"
)


def record(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())  # one write of a short line: atomic with O_APPEND
    finally:
        os.close(fd)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("record")
    parser.add_argument("--hang", type=int, default=None)
    parser.add_argument("--lease", type=float, default=30.0)
    args = parser.parse_args()
    storage = storage_for_url(args.url)
    await storage.open()

    async def deliver(batch: MessageBatch) -> None:
        for message in batch.messages:
            n = message.body["n"]
            record(args.record, f"{n} {message.attempts} {os.getpid()}")
            if n == args.hang:
                record(args.record, "hang")
                await asyncio.sleep(3600)
            fail = message.body.get("fail")
            if fail == "always" or (fail == "once" and message.attempts == 1):
                message.retry()
            else:
                message.ack()
            await asyncio.sleep(0.002)

    consumers = QueueConsumers(
        binding_store(storage), [CONSUMER], SystemClock(), deliver, poll_interval=0.02, lease_seconds=args.lease
    )
    async with consumers:
        record(args.record, f"ready {os.getpid()}")
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
