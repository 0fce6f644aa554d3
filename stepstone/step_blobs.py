"""Step outputs beyond JSON: ``bytes`` over the step-result limit, an async iterator of ``bytes`` or an open
binary file, streamed into the blob store (:mod:`stepstone.storage.blobs`) and returned as a :class:`ByteStream`.

Cloudflare's counterpart is a step returning a ``ReadableStream`` (changelog 2026-04-21): non-stream results
stay limited to 1 MiB, streamed ones may be far larger but count toward the instance's storage limit. Here the
instance's state (its recorded step results plus its streamed outputs) is counted as the steps record it, and
a step output that would take it over ``Limits.instance_state_bytes`` is fatal for the instance, with
Cloudflare's message ("The instance has exceeded the 1GiB storage limit") and the numbers.

The output is never held whole: chunks go to the store as the source yields them, and the reader reads the
stored bytes back a chunk at a time. The live call and every replay return the same thing, a
:class:`ByteStream` over the stored bytes (DESIGN.md §2: the decoded stored form).
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from typing import Any

from stepstone import codec
from stepstone.codec import BlobRef
from stepstone.errors import WorkflowFatalError, WorkflowTimeoutError
from stepstone.limits import check_size, state_limit_message
from stepstone.run_state import RunState
from stepstone.storage.blobs import CHUNK_BYTES, BlobStore

__all__ = ["MAX_CHUNK_BYTES", "ByteStream", "StepOutputError", "decode_result", "store_result"]

MAX_CHUNK_BYTES = 16 << 20
"""The largest chunk a streamed output may yield (Cloudflare's ``MAX_STREAM_OUTPUT_INPUT_CHUNK_BYTES``)."""

_BYTES_LIKE = (bytes, bytearray, memoryview)


class StepOutputError(WorkflowFatalError):
    """A step's output breaks a rule no retry can change (the instance's state limit, a stream's chunks): the
    instance errors with it, as Cloudflare's engine aborts with ``Storage limit exceeded``."""


class ByteStream:
    """A step output kept in the blob store: what a step that returned bytes over the result limit, an async
    iterator of bytes or a binary file gets back, live and on every replay.

    ``async for chunk in stream`` reads it from the start (again on each loop), a chunk of at most 1 MiB at a
    time; ``await stream.read()`` returns all of it at once (in memory: mind the size). Returning a
    ``ByteStream`` from another step stores a copy for that step.
    """

    __slots__ = ("_pk", "_store", "id", "size")

    def __init__(self, store: BlobStore, instance_pk: int, ref: BlobRef) -> None:
        self._store = store
        self._pk = instance_pk
        self.id = ref.id
        """The blob's id in the store."""
        self.size = ref.size
        """Its size in bytes."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._store.read(self._pk, self.id)

    async def read(self) -> bytes:
        """All the bytes, read into memory."""
        return b"".join([chunk async for chunk in self])

    def __repr__(self) -> str:
        return f"ByteStream(size={self.size})"


def decode_result(state: RunState, text: str) -> Any:
    """A recorded step result as the step returns it: a :class:`ByteStream` for a blob, else the value."""
    value = codec.decode(text)
    if isinstance(value, BlobRef):
        return ByteStream(state.storage.blobs, state.lease.pk, value)
    return value


def _stored_bytes(state: RunState) -> int:
    """The instance's recorded state now: step results (their stored text) and blobs, counted once per run."""
    if state.stored_bytes < 0:
        total = 0
        for rec in state.history.values():
            result = rec.result
            if result:
                total += len(result) if result.isascii() else len(result.encode())
                if rec.status == "success" and result.startswith('{"$blob":'):
                    value = codec.decode(result)
                    total += value.size if isinstance(value, BlobRef) else 0
        state.stored_bytes = total
    return state.stored_bytes


def _over_limit(state: RunState, what: str, nbytes: int, before: int) -> StepOutputError:
    limit = state.limits.instance_state_bytes
    return StepOutputError(state_limit_message(what, nbytes, before, limit))


_PLAIN: frozenset[type] = frozenset((type(None), bool, int, float, str, dict, list, tuple))
"""Results that are never streams (most of them): no ABC check for those."""


def _is_stream(value: object, limit: int) -> bool:
    if type(value) in _PLAIN:
        return False
    if isinstance(value, _BYTES_LIKE):
        n = value.nbytes if isinstance(value, memoryview) else len(value)
        return 4 * ((n + 2) // 3) + 13 > limit  # its stored form {"$bytes":"<base64>"} would be over the limit
    return hasattr(type(value), "__aiter__") or isinstance(value, io.IOBase)


async def store_result(state: RunState, key: str, display: str, value: object, timeout_ms: float) -> str:
    """The stored text of a step's result: JSON within the step-result limit, or the reference to a blob the
    output was streamed into (within ``timeout_ms``, the step's timeout, counted from here).

    Raises:
        SerializationError: an unstorable JSON value (fatal for the instance, as before).
        LimitExceededError: a JSON result over ``Limits.step_result_bytes``.
        StepOutputError: over the instance's state limit, or a stream that yields something other than bytes
            (or chunks over 16 MiB), or a text file.
        WorkflowTimeoutError: the stream did not end within the timeout (the attempt fails and is retried).
    """
    limits = state.limits
    what = f'step "{display}" output'
    if not _is_stream(value, limits.step_result_bytes):
        encoded = codec.encode(value, what=f'step "{display}" result')
        n = len(encoded) if encoded.isascii() else len(encoded.encode())
        check_size(n, limits.step_result_bytes, what=f'step "{display}" result')
        before = _stored_bytes(state)
        if before + n > limits.instance_state_bytes:
            raise _over_limit(state, what, n, before)
        state.stored_bytes = before + n
        return encoded
    if isinstance(value, io.TextIOBase):
        raise StepOutputError(f"{what} is a text file: return a file opened in binary mode ('rb')")
    before = _stored_bytes(state)
    taken = 0

    async def charged() -> AsyncIterator[bytes]:
        nonlocal taken
        async for chunk in _chunks(value, what):
            taken += len(chunk)
            state.stored_bytes += len(chunk)
            if state.stored_bytes > limits.instance_state_bytes:
                raise _over_limit(state, what, taken, state.stored_bytes - taken)
            yield chunk

    try:
        async with asyncio.timeout(timeout_ms / 1000):
            blob_id, size = await state.storage.blobs.write(state.lease, key, charged())
    except BaseException as exc:
        state.stored_bytes -= taken
        if isinstance(exc, TimeoutError):
            raise WorkflowTimeoutError(f"Execution timed out after {int(timeout_ms)}ms") from None
        raise
    ref = BlobRef(blob_id, size).stored()
    state.stored_bytes += len(ref.encode())
    return ref


async def _chunks(source: object, what: str) -> AsyncIterator[bytes]:
    """The source's bytes as chunks: slices of a bytes value, reads of a file, or what an async iterator yields."""
    if isinstance(source, _BYTES_LIKE):
        view = memoryview(source).cast("B")
        for i in range(0, view.nbytes, CHUNK_BYTES):
            yield bytes(view[i : i + CHUNK_BYTES])
        return
    if isinstance(source, io.IOBase):
        try:
            while True:
                data = await asyncio.to_thread(source.read, CHUNK_BYTES)
                if not data:
                    return
                yield _checked(data, what)
        finally:
            source.close()
    if getattr(source, "locked", False) is True:  # a ReadableStream (the bindings' R2 body) already read
        raise StepOutputError(
            f"{what} is a ReadableStream that is already locked or otherwise unreadable: return a fresh, unlocked "
            "ReadableStream from step.do()"
        )
    iterator: AsyncIterator[object] = source.__aiter__()  # type: ignore[attr-defined]
    async for chunk in iterator:
        data = _checked(chunk, what)
        if data:
            yield data


def _checked(chunk: object, what: str) -> bytes:
    if not isinstance(chunk, _BYTES_LIKE):
        raise StepOutputError(
            f"{what} is a stream with an unsupported chunk type: {type(chunk).__name__} "
            "(only bytes, bytearray and memoryview chunks are supported)"
        )
    data = bytes(chunk)
    if len(data) > MAX_CHUNK_BYTES:
        raise StepOutputError(
            f"{what} is a stream with a chunk of {len(data)} bytes, larger than the maximum allowed size of "
            f"{MAX_CHUNK_BYTES} bytes (16 MiB): return smaller chunks"
        )
    return data
