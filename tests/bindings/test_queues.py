"""Queues on SQLite and PostgreSQL: send, batches, ack/retry, dead letters, leases; Cloudflare's rules."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from stepstone.bindings.config import QueueConsumerConfig
from stepstone.bindings.errors import QueueError
from stepstone.bindings.queues import MessageBatch, Queue, QueueConsumers, call_queue_handler
from stepstone.storage.bindings_base import BindingStore
from stepstone.testing import FakeClock

from .conftest import Opener

Q = QueueConsumerConfig("jobs", max_batch_size=3, max_batch_timeout=5, max_retries=2, dead_letter_queue="dlq")


class Recorder:
    def __init__(self, decide=None) -> None:  # type: ignore[no-untyped-def]
        self.batches: list[MessageBatch] = []
        self.decide = decide

    async def __call__(self, batch: MessageBatch) -> None:
        self.batches.append(batch)
        if self.decide is not None:
            self.decide(batch)


async def test_bodies_keep_their_content_type(store: BindingStore, clock: FakeClock) -> None:
    queue = Queue(store, "jobs", clock)
    await queue.send({"user": 1, "raw": b"\x00"})  # v8, the default: bytes survive
    await queue.send("plain", contentType="text")
    await queue.send(b"\x01\x02")
    await queue.sendBatch([{"body": [1, 2], "contentType": "json"}, {"body": "x", "content_type": "text"}])
    rec = Recorder()
    consumers = QueueConsumers(store, [QueueConsumerConfig("jobs", max_batch_size=10, max_batch_timeout=0)], clock, rec)
    assert await consumers.poll_once(consumers._consumers[0])
    (batch,) = rec.batches
    assert batch.queue == "jobs"
    bodies = [m.body for m in batch.messages]
    assert bodies == [{"user": 1, "raw": b"\x00"}, "plain", b"\x01\x02", [1, 2], "x"]
    first = batch.messages[0]
    assert first.body.user == 1 and first.body.to_py() == {"user": 1, "raw": b"\x00"}
    assert first.attempts == 1 and first.timestamp == datetime.fromtimestamp(clock.now(), UTC) and first.id
    assert await store.queue_depth("jobs") == 0  # the handler returned: everything acked


async def test_batches_wait_for_size_or_timeout_and_delays_hide(store: BindingStore, clock: FakeClock) -> None:
    queue = Queue(store, "jobs", clock)
    rec = Recorder()
    consumers = QueueConsumers(store, [Q], clock, rec)
    await queue.send(1)
    await queue.send(2, delaySeconds=60)
    assert not await consumers.poll_once(Q)  # one message, batch of 3, timeout not reached
    clock.advance(5)
    assert await consumers.poll_once(Q)
    assert [m.body for m in rec.batches[-1].messages] == [1]
    clock.advance(55)
    await queue.sendBatch([{"body": 3}, {"body": 4}], delaySeconds=0)
    assert await consumers.poll_once(Q)  # 2 (now visible), 3, 4: a full batch, no waiting
    assert [m.body for m in rec.batches[-1].messages] == [2, 3, 4]


async def test_ack_retry_and_dead_letter(store: BindingStore, clock: FakeClock) -> None:
    queue = Queue(store, "jobs", clock)
    await queue.sendBatch([{"body": "ok"}, {"body": "again"}, {"body": "poison"}])

    def decide(batch: MessageBatch) -> None:
        for m in batch.messages:
            if m.body == "ok":
                m.ack()
                m.retry()  # the first decision sticks
            elif m.body == "again":
                m.retry(delaySeconds=30) if m.attempts == 1 else m.ack()
        raise RuntimeError("boom")  # poison is undecided: retried

    rec = Recorder(decide)
    consumers = QueueConsumers(store, [Q], clock, rec)
    assert await consumers.poll_once(Q)
    assert await store.queue_depth("jobs") == 2
    clock.advance(5)
    assert await consumers.poll_once(Q)
    assert [(m.body, m.attempts) for m in rec.batches[-1].messages] == [("poison", 2)]
    clock.advance(25)
    assert await consumers.poll_once(Q)  # "again" after its 30 s delay, and poison a third time
    assert sorted((m.body, m.attempts) for m in rec.batches[-1].messages) == [("again", 2), ("poison", 3)]
    assert await store.queue_depth("jobs") == 0 and await store.queue_depth("dlq") == 1  # 3 deliveries = 1 + 2 retries
    dlq = QueueConfigDLQ = QueueConsumerConfig("dlq", max_batch_timeout=0)
    consumers = QueueConsumers(store, [QueueConfigDLQ], clock, rec)
    assert await consumers.poll_once(dlq)
    assert [(m.body, m.attempts) for m in rec.batches[-1].messages] == [("poison", 1)]


async def test_retry_all_ack_all_and_no_dead_letter_queue(store: BindingStore, clock: FakeClock) -> None:
    consumer = QueueConsumerConfig("q", max_batch_size=5, max_batch_timeout=0, max_retries=0, retry_delay=10)
    queue = Queue(store, "q", clock)
    await queue.sendBatch([{"body": i} for i in range(3)])

    def first(batch: MessageBatch) -> None:
        batch.messages[0].ack()
        batch.retryAll()

    rec = Recorder(first)
    assert await QueueConsumers(store, [consumer], clock, rec).poll_once(consumer)
    assert await store.queue_depth("q") == 0  # max_retries = 0 and no dead-letter queue: dropped
    await queue.send("x")
    rec2 = Recorder(lambda b: b.ack_all())
    assert await QueueConsumers(store, [consumer], clock, rec2).poll_once(consumer)
    assert await store.queue_depth("q") == 0


async def test_a_lapsed_lease_gives_the_batch_to_another_consumer(opener: Opener, clock: FakeClock) -> None:
    from stepstone.storage import binding_store

    one, two = binding_store(await opener()), binding_store(await opener())
    await Queue(one, "jobs", clock).sendBatch([{"body": i} for i in range(3)])
    consumer = QueueConsumerConfig("jobs", max_batch_size=3, max_batch_timeout=0)
    late = QueueConsumers(one, [consumer], clock, Recorder(), lease_seconds=30)

    async def slow(batch: MessageBatch) -> None:
        clock.advance(31)  # the handler outlives its lease (no renewal ran): another process takes the batch
        taker = Recorder()
        assert await QueueConsumers(two, [consumer], clock, taker).poll_once(consumer)
        assert [m.attempts for m in taker.batches[0].messages] == [2, 2, 2]

    late._deliver = slow
    assert await late.poll_once(consumer)
    assert await one.queue_depth("jobs") == 0  # acked once, by the taker; the late consumer's settle lost them


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda q: q.send(1, contentType="xml"), TypeError, "Queue send failed: contentType must be one of"),
        (lambda q: q.send(1, delaySeconds=43201), QueueError, "Queue send failed: delaySeconds must be a number"),
        (lambda q: q.send("x" * 128_001, contentType="text"), QueueError, "Queue send failed: the message is 128001"),
        (lambda q: q.send(object()), TypeError, "Queue send failed: "),
        (lambda q: q.send({1, 2}, contentType="json"), TypeError, "Queue send failed: the body is not JSON"),
        (lambda q: q.sendBatch([{"body": i} for i in range(101)]), QueueError, "Queue sendBatch failed: 101 messages"),
        (lambda q: q.sendBatch([]), QueueError, "Queue sendBatch failed: a batch needs at least one message"),
        (lambda q: q.sendBatch([1]), TypeError, "Queue sendBatch failed: message 0 must be a dict with a body"),
    ],
)
async def test_bad_input(store: BindingStore, clock: FakeClock, call, error, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error) as caught:
        await call(Queue(store, "jobs", clock))
    assert str(caught.value).startswith(message)


async def test_call_queue_handler_picks_the_arity() -> None:
    seen: list[tuple[object, ...]] = []

    class Old:
        async def queue(self, batch, env, ctx):  # type: ignore[no-untyped-def]
            seen.append((batch, env, ctx))

    class New:
        def queue(self, batch):  # type: ignore[no-untyped-def]
            seen.append((batch,))

    batch = MessageBatch("q", [])
    await call_queue_handler(Old().queue, batch, "env", "ctx")
    await call_queue_handler(New().queue, batch, "env", "ctx")
    assert seen == [(batch, "env", "ctx"), (batch,)]


async def test_stop_returns_right_after_a_batch(store: BindingStore, clock: FakeClock) -> None:
    import asyncio

    await Queue(store, "jobs", clock).sendBatch([{"body": i} for i in range(3)])
    handled = asyncio.Event()

    async def deliver(batch: MessageBatch) -> None:
        handled.set()

    consumers = QueueConsumers(store, [QueueConsumerConfig("jobs", max_batch_timeout=0)], clock, deliver)
    await consumers.start()
    await handled.wait()
    await asyncio.wait_for(consumers.stop(), timeout=30)  # a stop landing as the batch settles once hung here
