"""Queues: the ``Queue`` producer binding, and the consumer loop that feeds a Worker's ``queue(batch)`` handler.

Messages live in a table of the project's database. A consumer claims up to ``max_batch_size`` visible
messages, leasing them (hidden for ``lease_seconds``, renewed while the handler runs), and hands them to the
handler as a :class:`MessageBatch`. Delivery is at least once: a message is deleted only when acked; a consumer
that dies mid-batch leaves its messages leased, and they come back when the lease lapses. Then, as on
Cloudflare:

- ``message.ack()`` / ``message.retry(delaySeconds=)`` decide one message (the first decision sticks);
- ``batch.ackAll()`` / ``batch.retryAll(delaySeconds=)`` decide the others;
- a handler that returns acks what is undecided; one that raises retries it;
- a message retried after its ``max_retries + 1``-th delivery goes to the ``dead_letter_queue`` (or is dropped).

On PostgreSQL several workers share a queue (claims ``FOR UPDATE SKIP LOCKED``); on SQLite the processes sharing
the file do.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

from stepstone import codec
from stepstone.bindings.config import MAX_DELAY_SECONDS, QueueConsumerConfig
from stepstone.bindings.errors import QueueError
from stepstone.bindings.values import js, read_body
from stepstone.clock import Clock
from stepstone.errors import SerializationError
from stepstone.storage.bindings_base import BindingStore, NewMessage, QueueMessageRecord, Settlement

log = logging.getLogger("stepstone.bindings.queues")

MAX_MESSAGE_BYTES: Final[int] = 128_000
"""Cloudflare's largest message: 128 KB."""
MAX_BATCH_MESSAGES: Final[int] = 100
MAX_BATCH_BYTES: Final[int] = 256_000
CONTENT_TYPES: Final[tuple[str, ...]] = ("json", "text", "bytes", "v8")

Deliver = Callable[["MessageBatch"], Awaitable[Any]]


def _options(positional: object, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(positional) if isinstance(positional, Mapping) else {}
    if positional is not None and not isinstance(positional, Mapping):
        raise TypeError(f"expected an options dict, got {type(positional).__name__}")
    aliases = {"delay_seconds": "delaySeconds", "content_type": "contentType"}
    out.update({aliases.get(k, k): v for k, v in kwargs.items()})
    return {aliases.get(k, k): v for k, v in out.items()}


def _delay(value: object, what: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= MAX_DELAY_SECONDS:
        raise QueueError(
            f"{what}: delaySeconds must be a number of seconds from 0 to {MAX_DELAY_SECONDS}, got {value!r}"
        )
    return int(value)


async def _encode(body: object, content_type: str, what: str) -> bytes:
    if content_type not in CONTENT_TYPES:
        raise TypeError(f"{what}: contentType must be one of {', '.join(CONTENT_TYPES)}, got {content_type!r}")
    if content_type == "text":
        if not isinstance(body, str):
            raise TypeError(f"{what}: a text message needs a str body, got {type(body).__name__}")
        return body.encode("utf-8")
    if content_type == "bytes":
        data = await read_body(body, what=what) if not isinstance(body, str) else None
        if data is None:
            raise TypeError(f"{what}: a bytes message needs a bytes-like body, got {type(body).__name__}")
        return data
    if content_type == "json":
        try:
            return json.dumps(body, separators=(",", ":"), allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{what}: the body is not JSON: {exc}") from None
    try:
        return codec.encode(body, what="message body").encode("utf-8")
    except SerializationError as exc:
        raise TypeError(f"{what}: {exc}") from None


def decode_body(data: bytes, content_type: str) -> Any:
    """A stored body back as the consumer sees it (JSON objects answer attributes and ``to_py()``)."""
    if content_type == "text":
        return data.decode("utf-8")
    if content_type == "bytes":
        return data
    if content_type == "json":
        return js(json.loads(data))
    return js(codec.decode(data.decode("utf-8")))


class Queue:
    """A queue producer binding (``env.MY_QUEUE``): ``send`` and ``sendBatch``.

    Args:
        store: the binding tables of the project's database.
        name: the queue.
        clock: where "now" comes from.
        delivery_delay: the producer's default delay in seconds (``[[queues.producers]] delivery_delay``).
    """

    def __init__(self, store: BindingStore, name: str, clock: Clock, *, delivery_delay: int = 0) -> None:
        self._store = store
        self.name = name
        self._clock = clock
        self._delivery_delay = delivery_delay

    def __repr__(self) -> str:
        return f"Queue({self.name!r})"

    async def send(self, body: object, options: object = None, **kwargs: Any) -> None:
        """Enqueue one message; options ``contentType`` (``json``, ``text``, ``bytes``, ``v8``: stepstone's codec,
        the default, which keeps bytes and datetimes) and ``delaySeconds`` (0 to 43200)."""
        opts = _options(options, kwargs)
        message = await self._message(body, opts, "Queue send failed")
        await self._store.queue_send(self.name, [message], now=self._clock.now())

    async def sendBatch(self, messages: Sequence[object], options: object = None, **kwargs: Any) -> None:
        """Enqueue up to 100 messages (``[{"body": ..., "contentType"?, "delaySeconds"?}]``) in one transaction;
        ``delaySeconds`` in the options applies to those without their own."""
        opts = _options(options, kwargs)
        what = "Queue sendBatch failed"
        if not isinstance(messages, list | tuple):
            raise TypeError(f"{what}: expected a list of messages, got {type(messages).__name__}")
        if not messages:
            raise QueueError(f"{what}: a batch needs at least one message")
        if len(messages) > MAX_BATCH_MESSAGES:
            raise QueueError(f"{what}: {len(messages)} messages, over the limit of {MAX_BATCH_MESSAGES} per batch")
        out = []
        for i, raw in enumerate(messages):
            if not isinstance(raw, Mapping) or "body" not in raw:
                raise TypeError(f"{what}: message {i} must be a dict with a body")
            mine = _options(raw, {})
            mine.setdefault("delaySeconds", opts.get("delaySeconds"))
            out.append(await self._message(raw["body"], mine, what))
        total = sum(len(m.body) for m in out)
        if total > MAX_BATCH_BYTES:
            raise QueueError(f"{what}: the batch is {total} bytes, over the limit of {MAX_BATCH_BYTES} bytes")
        await self._store.queue_send(self.name, out, now=self._clock.now())

    send_batch = sendBatch

    async def _message(self, body: object, opts: Mapping[str, Any], what: str) -> NewMessage:
        content_type = opts.get("contentType") or ("bytes" if isinstance(body, bytes | bytearray) else "v8")
        data = await _encode(body, str(content_type), what)
        if len(data) > MAX_MESSAGE_BYTES:
            raise QueueError(f"{what}: the message is {len(data)} bytes, over the limit of {MAX_MESSAGE_BYTES} bytes")
        delay = opts.get("delaySeconds")
        seconds = _delay(delay, what) if delay is not None else self._delivery_delay
        return NewMessage(uuid.uuid4().hex, data, str(content_type), float(seconds))


class Message:
    """One delivered message: ``id``, ``timestamp`` (when it was sent), ``body``, ``attempts`` (this delivery
    counts), ``ack()`` and ``retry(delaySeconds=)``."""

    def __init__(self, record: QueueMessageRecord) -> None:
        self._record = record
        self.id = record.id
        self.timestamp = datetime.fromtimestamp(record.sent_at, UTC)
        self.body = decode_body(record.body, record.content_type)
        self.attempts = record.attempts
        self.decision: tuple[str, float | None] | None = None
        """``("ack", None)`` or ``("retry", delay)`` once decided; the first decision sticks."""

    def __repr__(self) -> str:
        return f"Message(id={self.id!r}, attempts={self.attempts})"

    def ack(self) -> None:
        """Mark the message delivered: it is deleted, whatever the handler does next."""
        if self.decision is None:
            self.decision = ("ack", None)

    def retry(self, options: object = None, **kwargs: Any) -> None:
        """Deliver the message again, after ``delaySeconds`` (default: the consumer's ``retry_delay``)."""
        opts = _options(options, kwargs)
        if self.decision is None:
            delay = opts.get("delaySeconds")
            self.decision = ("retry", None if delay is None else float(_delay(delay, "retry")))


class MessageBatch:
    """What ``queue(self, batch)`` receives: ``queue``, ``messages``, ``ackAll()``, ``retryAll(delaySeconds=)``."""

    def __init__(self, queue: str, messages: Sequence[Message]) -> None:
        self.queue = queue
        self.messages = list(messages)
        self._all: tuple[str, float | None] | None = None

    def __repr__(self) -> str:
        return f"MessageBatch(queue={self.queue!r}, messages={len(self.messages)})"

    def ackAll(self) -> None:
        """Ack every message not decided on its own."""
        if self._all is None:
            self._all = ("ack", None)

    def retryAll(self, options: object = None, **kwargs: Any) -> None:
        """Retry every message not decided on its own."""
        opts = _options(options, kwargs)
        if self._all is None:
            delay = opts.get("delaySeconds")
            self._all = ("retry", None if delay is None else float(_delay(delay, "retryAll")))

    ack_all = ackAll
    retry_all = retryAll

    def settlements(self, *, failed: bool, retry_delay: float) -> list[Settlement]:
        """Each message's fate: its own decision, else the batch's, else ack (or retry when ``failed``)."""
        fallback = self._all or (("retry", None) if failed else ("ack", None))
        out = []
        for m in self.messages:
            action, delay = m.decision or fallback
            out.append(Settlement(m.id, m._record.lease_token, action, retry_delay if delay is None else float(delay)))
        return out


async def call_queue_handler(method: Callable[..., Any], batch: MessageBatch, env: Any, ctx: Any) -> None:
    """Call a ``queue`` handler as Cloudflare does: ``queue(batch)``, or ``queue(batch, env, ctx)`` when the
    method takes them (older Python Workers code does)."""
    try:
        params = [
            p
            for p in inspect.signature(method).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        ]
    except (TypeError, ValueError):
        params = []
    wants_all = any(p.kind is p.VAR_POSITIONAL for p in params) or len(params) >= 3
    result = method(batch, env, ctx) if wants_all else method(batch)
    if inspect.isawaitable(result):
        await result


class QueueConsumers:
    """The consumer loops of a process: one task per ``[[queues.consumers]]`` entry, feeding ``deliver``.

    Args:
        store: the binding tables of the project's database.
        consumers: the consumer entries.
        clock: where "now" comes from (visibility, delays).
        deliver: called with each batch; it raising retries every undecided message.
        poll_interval: real seconds between looks at an empty queue.
        lease_seconds: how long a claimed batch stays hidden without renewal (renewed every third of it).
    """

    def __init__(
        self,
        store: BindingStore,
        consumers: Sequence[QueueConsumerConfig],
        clock: Clock,
        deliver: Deliver,
        *,
        poll_interval: float = 0.2,
        lease_seconds: float = 30.0,
    ) -> None:
        self._store = store
        self._consumers = list(consumers)
        self._clock = clock
        self._deliver = deliver
        self.poll_interval = poll_interval
        self.lease_seconds = lease_seconds
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self.delivered = 0
        """Batches handed to ``deliver`` by this process."""

    async def start(self) -> None:
        """Start one loop per consumer."""
        await self._store.ensure_schema()
        for consumer in self._consumers:
            self._tasks.append(asyncio.create_task(self._loop(consumer), name=f"stepstone-queue-{consumer.queue}"))

    async def stop(self) -> None:
        """Stop the loops; a batch being handled is cancelled and comes back when its lease lapses."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def wake(self) -> None:
        """Look at the queues now (a producer of this process just sent)."""
        self._wake.set()

    async def __aenter__(self) -> QueueConsumers:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0.001))
        self._wake.clear()

    async def _loop(self, consumer: QueueConsumerConfig) -> None:
        while True:
            try:
                handled = await self.poll_once(consumer)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue %s: consumer loop failed; trying again", consumer.queue)
                handled = False
            if not handled:
                await self._idle(self.poll_interval)

    async def poll_once(self, consumer: QueueConsumerConfig) -> bool:
        """Deliver one batch of ``consumer``'s queue if one is due (full, or its oldest message waited
        ``max_batch_timeout``); True when a batch was delivered."""
        now = self._clock.now()
        count, oldest = await self._store.queue_ready(consumer.queue, now=now, limit=consumer.max_batch_size)
        if count == 0 or oldest is None:
            return False
        if count < consumer.max_batch_size and now - oldest < consumer.max_batch_timeout:
            return False
        token = uuid.uuid4().hex
        records = await self._store.queue_claim(
            consumer.queue, now=now, limit=consumer.max_batch_size, lease_seconds=self.lease_seconds, token=token
        )
        if not records:
            return False
        batch = MessageBatch(consumer.queue, [Message(r) for r in records])
        renewer = asyncio.create_task(self._renew([r.id for r in records], token))
        failed = False
        try:
            self.delivered += 1
            await self._deliver(batch)
        except Exception as exc:
            failed = True
            log.warning("queue %s: the queue handler raised %s: %s", consumer.queue, type(exc).__name__, exc)
        finally:
            renewer.cancel()
            await asyncio.wait({renewer})  # not `await renewer`: that would swallow a cancellation of this task
        outcome = await self._store.queue_settle(
            consumer.queue,
            batch.settlements(failed=failed, retry_delay=float(consumer.retry_delay)),
            now=self._clock.now(),
            max_retries=consumer.max_retries,
            dead_letter_queue=consumer.dead_letter_queue,
        )
        if outcome.lost:
            log.warning(
                "queue %s: %d message(s) of the batch were leased too long and went to another consumer",
                consumer.queue,
                outcome.lost,
            )
        return True

    async def _renew(self, ids: list[str], token: str) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                await self._store.queue_renew(ids, token=token, until=self._clock.now() + self.lease_seconds)
            except Exception as exc:  # the next renewal may succeed; the lease covers a missed one
                log.warning("queue lease renewal failed: %s", exc)


__all__ = [
    "Message",
    "MessageBatch",
    "Queue",
    "QueueConsumers",
    "call_queue_handler",
    "decode_body",
]
