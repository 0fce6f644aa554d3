"""Plain Python stand-ins for the JavaScript values a Python Worker gets from a binding.

On Cloudflare a binding's result is a ``JsProxy``: attribute access (``result.results``), often subscripting,
and ``to_py()``. Here results are real Python objects that answer the same way: :class:`JsObject` is a ``dict``
with attribute access and ``to_py()``, :class:`JsArray` a ``list`` with ``to_py()``, :class:`ReadableStream`
an async iterator of ``bytes`` chunks, :class:`Blob` the ``workers.Blob`` an R2 body gives.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import AsyncIterator, Iterable
from typing import Any


class JsObject(dict[str, Any]):
    """A ``dict`` that also answers ``obj.name`` and ``obj.to_py()``, as a JsProxy of a JS object does.

    A key wins over a ``dict`` method of the same name, as on the JsProxy: ``(await kv.list()).keys`` is the list
    of keys, not ``dict.keys``.
    """

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and dict.__contains__(self, name):
            return dict.__getitem__(self, name)
        return super().__getattribute__(name)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_py(self) -> dict[str, Any]:
        """A plain ``dict`` copy (nested objects converted too)."""
        return {k: to_py(v) for k, v in dict.items(self)}


class JsArray(list[Any]):
    """A ``list`` that also answers ``to_py()``."""

    def to_py(self) -> list[Any]:
        """A plain ``list`` copy (nested objects converted too)."""
        return [to_py(v) for v in self]


def to_py(value: Any) -> Any:
    """Plain dicts and lists from :class:`JsObject` / :class:`JsArray` values, recursively."""
    if isinstance(value, JsObject):
        return value.to_py()
    if isinstance(value, JsArray):
        return value.to_py()
    return value


def js(value: Any) -> Any:
    """Wrap JSON-shaped data (dicts and lists, recursively) as :class:`JsObject` / :class:`JsArray`."""
    if isinstance(value, dict):
        return JsObject({str(k): js(v) for k, v in value.items()})
    if isinstance(value, list):
        return JsArray(js(v) for v in value)
    return value


class ReadableStream:
    """A body read once, in chunks: ``async for chunk in stream``, or ``await stream.bytes()`` / ``text()``."""

    def __init__(self, chunks: Iterable[bytes] | AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.locked = False

    async def __aiter__(self) -> AsyncIterator[builtins.bytes]:
        if self.locked:
            raise TypeError("This ReadableStream is currently locked to a reader.")
        self.locked = True
        if isinstance(self._chunks, AsyncIterator):
            async for chunk in self._chunks:
                yield bytes(chunk)
        else:
            for chunk in self._chunks:
                yield bytes(chunk)

    async def bytes(self) -> builtins.bytes:
        """Everything left in the stream."""
        return b"".join([chunk async for chunk in self])

    async def text(self) -> str:
        """Everything left, as UTF-8 text."""
        return (await self.bytes()).decode("utf-8", errors="replace")


class Blob:
    """An immutable body with a content type (``workers.Blob``): ``bytes()``, ``text()``, ``arrayBuffer()``."""

    def __init__(self, data: builtins.bytes, content_type: str = "") -> None:
        self._data = bytes(data)
        self.content_type = content_type
        self.type = content_type
        self.size = len(self._data)

    async def bytes(self) -> builtins.bytes:
        """The content."""
        return self._data

    async def arrayBuffer(self) -> builtins.bytes:
        """The content (a JS ArrayBuffer there)."""
        return self._data

    async def text(self) -> str:
        """The content as UTF-8 text."""
        return self._data.decode("utf-8", errors="replace")

    async def json(self) -> Any:
        """The content parsed as JSON."""
        return js(json.loads(self._data))


async def read_body(value: object, *, what: str) -> bytes | None:
    """The bytes of a body a binding accepts: ``str`` (UTF-8), bytes-like, a :class:`ReadableStream`, a
    :class:`Blob`, any async iterator of bytes, or an object with ``async bytes()``; None for anything else."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, Blob | ReadableStream):
        return await value.bytes()
    if isinstance(value, AsyncIterator):
        return b"".join([bytes(chunk) async for chunk in value])
    reader = getattr(value, "bytes", None)
    if callable(reader) and not isinstance(value, type):
        data = await reader()
        if isinstance(data, bytes | bytearray | memoryview):
            return bytes(data)
    return None


__all__ = ["Blob", "JsArray", "JsObject", "ReadableStream", "js", "read_body", "to_py"]
