"""Bodies and headers shared by :class:`~stepstone.workers.Request` and :class:`~stepstone.workers.Response`.

On Cloudflare these wrap JavaScript objects; here they are plain Python: headers are an
:class:`http.client.HTTPMessage` (case-insensitive, as the Python Workers SDK returns them), a body is bytes read
once from a chunk source, :class:`FormData` a small multidict, :class:`Blob` and :class:`File` bytes with a type.
"""

from __future__ import annotations

import builtins
import email.parser
import email.policy
import http.client
import json
import secrets
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import Any, TypeAlias
from urllib.parse import parse_qsl

HeadersInit: TypeAlias = "Mapping[str, str] | Iterable[tuple[str, str]] | http.client.HTTPMessage | None"
"""What ``headers=`` accepts: a mapping, ``(name, value)`` pairs or an ``HTTPMessage``."""


def make_headers(init: HeadersInit = None) -> http.client.HTTPMessage:
    """An ``HTTPMessage`` holding ``init``'s headers (a copy)."""
    headers = http.client.HTTPMessage()
    if init is None:
        return headers
    pairs: Iterable[tuple[str, str]]
    pairs = list(init.items()) if isinstance(init, http.client.HTTPMessage | Mapping) else list(init)
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str | int | float):
            raise TypeError(f"headers: expected str names and values, got {name!r}: {value!r}")
        headers[name] = str(value)
    return headers


class Blob:
    """Bytes with a content type (``Blob`` of the Fetch API)."""

    def __init__(self, data: bytes | str = b"", content_type: str = "") -> None:
        self._data = data.encode() if isinstance(data, str) else bytes(data)
        self._type = content_type

    @property
    def size(self) -> int:
        """The length in bytes."""
        return len(self._data)

    @property
    def content_type(self) -> str:
        """The MIME type ('' when unknown)."""
        return self._type

    async def bytes(self) -> bytes:
        """The contents."""
        return self._data

    async def text(self) -> str:
        """The contents decoded as UTF-8."""
        return self._data.decode("utf-8", errors="replace")


class File(Blob):
    """A :class:`Blob` with a file name, as a multipart form's file fields arrive."""

    def __init__(self, data: bytes | str, filename: str, content_type: str = "") -> None:
        super().__init__(data, content_type)
        self._name = filename

    @property
    def name(self) -> str:
        """The file name the client sent."""
        return self._name


FormDataValue: TypeAlias = "str | Blob"


class FormData:
    """Form fields, several per name allowed (``FormData`` of the Fetch API, with Python's mapping access)."""

    def __init__(self, fields: Mapping[str, FormDataValue] | Iterable[tuple[str, FormDataValue]] | None = None) -> None:
        self._items: list[tuple[str, FormDataValue]] = []
        if isinstance(fields, Mapping):
            self._items = list(fields.items())
        elif fields is not None:
            self._items = list(fields)

    def __getitem__(self, key: str) -> FormDataValue:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        """The first value of ``key``, or ``default``."""
        try:
            return self[key]
        except KeyError:
            return default

    def get_all(self, key: str) -> list[FormDataValue]:
        """Every value of ``key``, in order."""
        return [value for name, value in self._items if name == key]

    getAll = get_all

    def __setitem__(self, key: str, value: FormDataValue) -> None:
        self.delete(key)
        self._items.append((key, value))

    set = __setitem__

    def append(self, key: str, value: FormDataValue, filename: str | None = None) -> None:
        """Add a value (a file's name with ``filename``)."""
        if filename is not None and isinstance(value, Blob):
            value = File(value._data, filename, value.content_type)
        self._items.append((key, value))

    def delete(self, key: str) -> None:
        """Remove every value of ``key``."""
        self._items = [(name, value) for name, value in self._items if name != key]

    def has(self, key: str) -> bool:
        """Whether ``key`` has a value."""
        return any(name == key for name, _ in self._items)

    __contains__ = has

    def keys(self) -> Iterator[str]:
        """The names, once each, in order."""
        return iter(dict.fromkeys(name for name, _ in self._items))

    def values(self) -> Iterator[FormDataValue]:
        """Every value, in order."""
        return (value for _, value in self._items)

    def items(self) -> Iterator[tuple[str, FormDataValue]]:
        """Every ``(name, value)``, in order."""
        return iter(list(self._items))

    def __iter__(self) -> Iterator[str]:
        return self.keys()

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"FormData({self._items!r})"

    # -- wire forms -----------------------------------------------------------------------------------------
    def encode(self) -> tuple[bytes, str]:
        """The body and its content type: ``multipart/form-data`` (as the Fetch API sends a FormData)."""
        boundary = "----stepstone" + secrets.token_hex(12)
        out: list[bytes] = []
        for name, value in self._items:
            disposition = f'form-data; name="{_quote(name)}"'
            head = ""
            if isinstance(value, File):
                disposition += f'; filename="{_quote(value.name)}"'
            if isinstance(value, Blob):
                head = f"Content-Type: {value.content_type or 'application/octet-stream'}\r\n"
                data = value._data
            else:
                data = str(value).encode()
            out.append(f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{head}\r\n".encode() + data + b"\r\n")
        out.append(f"--{boundary}--\r\n".encode())
        return b"".join(out), f"multipart/form-data; boundary={boundary}"

    @classmethod
    def parse(cls, body: bytes, content_type: str) -> FormData:
        """A form from a ``application/x-www-form-urlencoded`` or ``multipart/form-data`` body.

        Raises:
            TypeError: another content type (the Fetch API's error for ``formData()``).
        """
        kind = content_type.split(";", 1)[0].strip().lower()
        if kind == "application/x-www-form-urlencoded":
            return cls(parse_qsl(body.decode("utf-8", errors="replace"), keep_blank_values=True))
        if kind != "multipart/form-data":
            raise TypeError(f"Unrecognized Content-Type header value {content_type!r}: expected a form")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
        )
        form = cls()
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if not isinstance(name, str):
                continue
            payload = part.get_payload(decode=True)
            data = payload if isinstance(payload, bytes) else b""
            filename = part.get_filename()
            if filename is not None:
                form.append(name, File(data, filename, part.get_content_type()))
            else:
                form.append(name, data.decode(part.get_content_charset() or "utf-8", errors="replace"))
        return form


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")


BodyInit: TypeAlias = "str | bytes | bytearray | memoryview | FormData | Blob | AsyncIterable[bytes] | None"
"""What a body may be given as: text, bytes, a form, a blob, or an async iterable of byte chunks (a stream)."""


def encode_body(body: BodyInit, headers: http.client.HTTPMessage) -> bytes | AsyncIterable[bytes] | None:
    """``body`` as bytes (or its chunk source), setting the content type the Fetch API sets when none is given."""
    if body is None:
        return None
    if isinstance(body, str):
        if "content-type" not in headers:
            headers["content-type"] = "text/plain;charset=UTF-8"
        return body.encode()
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body)
    if isinstance(body, FormData):
        data, kind = body.encode()
        if "content-type" not in headers:
            headers["content-type"] = kind
        return data
    if isinstance(body, Blob):
        if body.content_type and "content-type" not in headers:
            headers["content-type"] = body.content_type
        return body._data
    if hasattr(body, "__aiter__"):
        return body
    raise TypeError(f"Unsupported type in body: {type(body).__name__} (use str, bytes, FormData or a stream)")


def json_default(value: Any) -> Any:
    """How ``Response.json`` encodes what ``json`` cannot: dataclasses (an instance's status), datetimes, bytes."""
    import dataclasses
    from datetime import date, datetime

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(data: Any) -> str:
    """JSON text of ``data`` (compact, as ``JSON.stringify``)."""
    return json.dumps(data, separators=(",", ":"), default=json_default, ensure_ascii=False)


class Body:
    """The readable side of a request or response: read it once, as bytes, text, JSON or a form."""

    _source: bytes | AsyncIterable[bytes] | None
    _read: bool

    def _init_body(self, source: bytes | AsyncIterable[bytes] | None) -> None:
        self._source = source
        self._read = False

    @property
    def headers(self) -> http.client.HTTPMessage:
        raise NotImplementedError

    @property
    def body_used(self) -> bool:
        """Whether the body was read."""
        return self._read

    @property
    def body(self) -> AsyncIterator[bytes] | None:
        """The body as a stream: an async iterator of byte chunks (None without a body). Reading it uses it."""
        if self._source is None:
            return None
        self._check_unused()
        self._read = True
        return _chunks(self._source)

    def _check_unused(self) -> None:
        if self._read:
            raise OSError("Body already used")

    async def bytes(self) -> bytes:
        """The whole body."""
        self._check_unused()
        self._read = True
        source = self._source
        if source is None:
            return b""
        if isinstance(source, bytes):
            return source
        return b"".join([chunk async for chunk in source])

    async def buffer(self) -> builtins.bytes:
        """The whole body (an ``ArrayBuffer`` on Cloudflare; bytes here)."""
        return await self.bytes()

    async def text(self) -> str:
        """The body decoded as UTF-8."""
        return (await self.bytes()).decode("utf-8", errors="replace")

    async def _read_json(self, **kwargs: Any) -> Any:
        """The body parsed as JSON (``json.loads`` keyword arguments pass through)."""
        return json.loads(await self.text(), **kwargs)

    async def form_data(self) -> FormData:
        """The body parsed as a form (urlencoded or multipart)."""
        return FormData.parse(await self.bytes(), self.headers.get("content-type", ""))

    formData = form_data

    async def blob(self) -> Blob:
        """The body as a :class:`Blob` with the content type."""
        return Blob(await self.bytes(), self.headers.get("content-type", ""))

    def _tee(self) -> builtins.bytes | AsyncIterable[builtins.bytes] | None:
        """For ``clone()``: a stream body is buffered so both copies can read it."""
        self._check_unused()
        source = self._source
        if source is None or isinstance(source, bytes):
            return source
        buffered = _Buffered(source)
        self._source = buffered
        return buffered.copy()


async def _chunks(source: bytes | AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    if isinstance(source, bytes):
        if source:
            yield source
        return
    async for chunk in source:
        yield chunk


class _Buffered:
    """A stream read once and replayed to each copy (``clone()`` of a streamed body)."""

    def __init__(self, source: AsyncIterable[bytes]) -> None:
        self._source: AsyncIterable[bytes] | None = source
        self._data: bytes | None = None

    async def _all(self) -> builtins.bytes:
        if self._data is None:
            assert self._source is not None
            self._data = b"".join([chunk async for chunk in self._source])
            self._source = None
        return self._data

    def copy(self) -> AsyncIterable[bytes]:
        return _Replay(self)

    def __aiter__(self) -> AsyncIterator[bytes]:
        return _Replay(self).__aiter__()


class _Replay:
    def __init__(self, buffered: _Buffered) -> None:
        self._buffered = buffered

    async def _gen(self) -> AsyncIterator[bytes]:
        yield await self._buffered._all()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._gen()
