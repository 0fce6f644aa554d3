"""R2: an ``R2Bucket`` over a directory (:mod:`stepstone.bindings.r2_files`), with R2's objects and errors.

``head``, ``get`` (with ``range`` and ``onlyIf`` on etags), ``put`` (bytes, text, a stream or a Blob, with
``httpMetadata``, ``customMetadata`` and an ``md5`` to check), ``delete`` (a key or a list) and ``list``
(``prefix``, ``cursor``, ``delimiter``, ``startAfter``, ``limit``, ``include``). Options are passed as on
Cloudflare from Python, a dict or keyword arguments (``put(key, data, httpMetadata={"contentType": ...})``),
or in snake_case (``http_metadata=``). Objects answer both spellings (``obj.httpEtag``, ``obj.http_etag``).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from stepstone.bindings.errors import R2Error
from stepstone.bindings.r2_files import BucketDirectory, KeyClash, KeyRefused, StoredObject
from stepstone.bindings.values import Blob, JsArray, JsObject, ReadableStream, js, read_body
from stepstone.clock import Clock

MAX_LIST: Final[int] = 1000
MAX_PUT_BYTES: Final[int] = 5 * 1024**3 - 5 * 1024**2
"""R2's largest single ``put``: 5 GiB less 5 MiB."""
MAX_CUSTOM_METADATA: Final[int] = 2048
_HTTP_FIELDS: Final[dict[str, str]] = {
    "contentType": "content-type",
    "contentLanguage": "content-language",
    "contentDisposition": "content-disposition",
    "contentEncoding": "content-encoding",
    "cacheControl": "cache-control",
    "cacheExpiry": "expires",
}
_SNAKE: Final[dict[str, str]] = {
    "http_metadata": "httpMetadata",
    "custom_metadata": "customMetadata",
    "only_if": "onlyIf",
    "start_after": "startAfter",
    "storage_class": "storageClass",
    "content_type": "contentType",
    "content_language": "contentLanguage",
    "content_disposition": "contentDisposition",
    "content_encoding": "contentEncoding",
    "cache_control": "cacheControl",
    "cache_expiry": "cacheExpiry",
    "etag_matches": "etagMatches",
    "etag_does_not_match": "etagDoesNotMatch",
}


def _camel(options: object, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"expected an options dict, got {type(options).__name__}")
    merged = {**(options or {}), **kwargs}
    return {_SNAKE.get(str(k), str(k)): v for k, v in merged.items()}


def _fail(method: str, message: str, code: int) -> R2Error:
    return R2Error(f"{method}: {message} ({code})")


class R2Object:
    """An object's metadata (``head``, ``put``, ``list``): ``key``, ``version``, ``size``, ``etag``, ``httpEtag``,
    ``uploaded``, ``httpMetadata``, ``customMetadata``, ``checksums``, ``storageClass``, ``range``."""

    def __init__(self, stored: StoredObject, *, include_metadata: bool = True, range_: JsObject | None = None) -> None:
        self.key = stored.key
        self.version = stored.version
        self.size = stored.size
        self.etag = stored.etag
        self.httpEtag = f'"{stored.etag}"'
        self.uploaded = datetime.fromtimestamp(stored.uploaded, UTC)
        self.httpMetadata = js(dict(stored.http_metadata)) if include_metadata else JsObject()
        self.customMetadata = js(dict(stored.custom_metadata)) if include_metadata else JsObject()
        self.checksums = JsObject(md5=stored.etag)
        self.storageClass = "Standard"
        self.range = range_

    @property
    def http_etag(self) -> str:
        """``httpEtag``: the etag quoted, for an ``ETag`` header."""
        return self.httpEtag

    @property
    def http_metadata(self) -> JsObject:
        """``httpMetadata``."""
        return self.httpMetadata

    @property
    def custom_metadata(self) -> JsObject:
        """``customMetadata``."""
        return self.customMetadata

    @property
    def storage_class(self) -> str:
        """``storageClass``."""
        return self.storageClass

    def writeHttpMetadata(self, headers: Any) -> None:
        """Set the object's HTTP metadata as headers on ``headers`` (a dict, or anything with ``set``)."""
        for name, header in _HTTP_FIELDS.items():
            value = self.httpMetadata.get(name)
            if value is None:
                continue
            if hasattr(headers, "set"):
                headers.set(header, str(value))
            else:
                headers[header] = str(value)

    write_http_metadata = writeHttpMetadata

    def __repr__(self) -> str:
        return f"R2Object(key={self.key!r}, size={self.size}, etag={self.etag!r})"


class R2ObjectBody(R2Object):
    """An object with its body (``get``): ``body`` (a stream), ``bodyUsed``, ``arrayBuffer()`` / ``bytes()``,
    ``text()``, ``json()``, ``blob()``."""

    def __init__(self, stored: StoredObject, data: bytes, *, range_: JsObject | None = None) -> None:
        super().__init__(stored, range_=range_)
        self._data = data
        self.bodyUsed = False
        self.body = ReadableStream(self._chunks())

    def _chunks(self) -> Any:
        self.bodyUsed = True
        yield self._data

    def _take(self) -> bytes:
        if self.bodyUsed:
            raise TypeError(
                "Body has already been used. It can only be used once. Use tee() first if you need it twice."
            )
        self.bodyUsed = True
        return self._data

    @property
    def body_used(self) -> bool:
        """``bodyUsed``."""
        return self.bodyUsed

    async def arrayBuffer(self) -> bytes:
        """The body's bytes."""
        return self._take()

    async def bytes(self) -> bytes:
        """The body's bytes (the Python SDK's name)."""
        return self._take()

    async def text(self) -> str:
        """The body as UTF-8 text."""
        return self._take().decode("utf-8", errors="replace")

    async def json(self) -> Any:
        """The body parsed as JSON."""
        return js(json.loads(self._take()))

    async def blob(self) -> Blob:
        """The body as a ``Blob`` with the object's content type."""
        return Blob(self._take(), str(self.httpMetadata.get("contentType") or ""))


class R2Bucket:
    """An R2 bucket binding (``env.BUCKET``) over a directory.

    Args:
        root: the bucket's directory (``.stepstone/r2/<bucket_name>`` by default).
        name: the ``bucket_name``.
        clock: where upload times come from.
    """

    def __init__(self, root: Path, *, name: str, clock: Clock) -> None:
        self._dir = BucketDirectory(root)
        self.root = root
        self.name = name
        self._clock = clock

    def __repr__(self) -> str:
        return f"R2Bucket({self.name!r})"

    @staticmethod
    def _key(method: str, key: object) -> str:
        if not isinstance(key, str):
            raise TypeError(f"Failed to execute '{method}' on 'R2Bucket': parameter 1 is not of type 'string'.")
        return key

    async def _meta(self, method: str, key: str) -> StoredObject | None:
        try:
            return await asyncio.to_thread(self._dir.read_meta, self._key(method, key))
        except KeyRefused:
            raise _fail(method, "The specified object name is not valid.", 10020) from None

    async def head(self, key: str) -> R2Object | None:
        """The object's metadata, or None."""
        stored = await self._meta("head", key)
        return None if stored is None else R2Object(stored)

    async def get(self, key: str, options: object = None, **kwargs: Any) -> R2ObjectBody | R2Object | None:
        """The object with its body, or None; ``range`` (``{offset, length}`` or ``{suffix}``) reads part of it;
        an ``onlyIf`` that fails gives the object without a body."""
        opts = _camel(options, kwargs)
        stored = await self._meta("get", key)
        if stored is None:
            return None
        if not _conditions_hold(opts.get("onlyIf"), stored):
            return R2Object(stored)
        start, length = _range("get", opts.get("range"), stored.size)
        data = await asyncio.to_thread(self._dir.read, key, start, length)
        if len(data) != (stored.size - start if length is None else length):  # replaced meanwhile: read it again
            stored = await self._meta("get", key) or stored
        range_ = JsObject(offset=start, length=len(data)) if opts.get("range") is not None else None
        return R2ObjectBody(stored, data, range_=range_)

    async def put(self, key: str, value: object, options: object = None, **kwargs: Any) -> R2Object | None:
        """Store ``value`` (bytes, text, a stream, a Blob, or None for an empty object); returns its metadata, or
        None when ``onlyIf`` fails."""
        opts = _camel(options, kwargs)
        self._key("put", key)
        data = b"" if value is None else await read_body(value, what="value")
        if data is None:
            raise TypeError(
                "Failed to execute 'put' on 'R2Bucket': parameter 2 is not of type "
                "'ReadableStream or ArrayBuffer or ArrayBufferView or string or Blob'."
            )
        if len(data) > MAX_PUT_BYTES:
            raise _fail("put", "Your proposed upload exceeds the maximum allowed object size.", 100100)
        http = _http_metadata(opts.get("httpMetadata"))
        custom = _custom_metadata(opts.get("customMetadata"))
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if opts.get("md5") is not None and _hex(opts["md5"]) != etag:
            raise _fail("put", "The Content-MD5 you specified did not match what we received.", 10037)
        if opts.get("onlyIf") is not None:
            current = await self._meta("put", key)
            if current is not None and not _conditions_hold(opts["onlyIf"], current):
                return None
        stored = StoredObject(key, len(data), etag, uuid.uuid4().hex, self._clock.now(), http, custom)
        try:
            await asyncio.to_thread(self._dir.write, stored, data)
        except KeyRefused:
            raise _fail("put", "The specified object name is not valid.", 10020) from None
        except KeyClash as clash:
            raise _fail(
                "put",
                f"The specified object name is not valid: {key!r} and {clash.other!r} cannot both be objects of a "
                "directory bucket (a file and a folder of one name).",
                10020,
            ) from None
        return R2Object(stored)

    async def delete(self, keys: str | list[str]) -> None:
        """Delete one key or up to 1000; missing keys are no error."""
        many = keys if isinstance(keys, list) else [keys]
        if len(many) > MAX_LIST:
            raise _fail("delete", f"You can delete at most {MAX_LIST} objects at a time.", 10029)
        for key in many:
            try:
                await asyncio.to_thread(self._dir.delete, self._key("delete", key))
            except KeyRefused:
                raise _fail("delete", "The specified object name is not valid.", 10020) from None

    async def list(self, options: object = None, **kwargs: Any) -> JsObject:
        """``{objects, truncated, cursor?, delimitedPrefixes}``: keys in byte order after ``cursor`` or
        ``startAfter``, grouped by ``delimiter``; metadata only when ``include`` names it."""
        opts = _camel(options, kwargs)
        prefix = opts.get("prefix") or ""
        limit = opts.get("limit", MAX_LIST)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIST:
            raise _fail("list", f"MaxKeys params must be positive integer <= {MAX_LIST}.", 10022)
        delimiter = opts.get("delimiter") or ""
        include = set(opts.get("include") or ())
        after = _cursor(opts.get("cursor")) or opts.get("startAfter") or ""
        keys = await asyncio.to_thread(self._dir.keys, prefix)
        objects = JsArray()
        prefixes: list[str] = []
        last = ""
        truncated = False
        for key in keys:
            if after and (_b(key) <= _b(after) or (after.endswith(delimiter or "\x00") and key.startswith(after))):
                continue
            if delimiter and delimiter in key[len(prefix) :]:
                group = key[: len(prefix) + key[len(prefix) :].index(delimiter) + len(delimiter)]
                if prefixes and prefixes[-1] == group:
                    continue
                if len(objects) + len(prefixes) == limit:
                    truncated = True
                    break
                prefixes.append(group)
                last = group
                continue
            if len(objects) + len(prefixes) == limit:
                truncated = True
                break
            stored = await asyncio.to_thread(self._dir.read_meta, key)
            if stored is None:
                continue
            obj = R2Object(stored, include_metadata=bool(include & {"httpMetadata", "customMetadata"}))
            if "httpMetadata" not in include:
                obj.httpMetadata = JsObject()
            if "customMetadata" not in include:
                obj.customMetadata = JsObject()
            objects.append(obj)
            last = key
        result = JsObject(objects=objects, truncated=truncated, delimitedPrefixes=JsArray(prefixes))
        if truncated:
            result["cursor"] = base64.urlsafe_b64encode(last.encode("utf-8", "surrogatepass")).decode()
        return result


def _b(key: str) -> bytes:
    return key.encode("utf-8", errors="surrogatepass")


def _cursor(cursor: object) -> str:
    if cursor in (None, ""):
        return ""
    if not isinstance(cursor, str):
        raise TypeError("R2 list() cursor must be a string")
    try:
        return base64.urlsafe_b64decode(cursor.encode("ascii")).decode("utf-8", "surrogatepass")
    except (ValueError, UnicodeError):
        raise _fail("list", "The continuation token provided is incorrect.", 10020) from None


def _hex(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return str(value).lower()


def _http_metadata(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        items = {_SNAKE.get(str(k), str(k)): v for k, v in value.items()}
    elif hasattr(value, "get"):  # Headers: take the HTTP metadata headers
        items = {name: value.get(header) for name, header in _HTTP_FIELDS.items() if value.get(header) is not None}
    else:
        raise TypeError(f"httpMetadata must be a dict or headers, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for name, item in items.items():
        if name not in _HTTP_FIELDS:
            raise TypeError(f"httpMetadata: unknown field {name!r} (expected one of {', '.join(_HTTP_FIELDS)})")
        out[name] = item.isoformat() if isinstance(item, datetime) else str(item)
    return out


def _custom_metadata(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"customMetadata must be a dict of strings, got {type(value).__name__}")
    out = {str(k): str(v) for k, v in value.items()}
    if sum(len(k.encode()) + len(v.encode()) for k, v in out.items()) > MAX_CUSTOM_METADATA:
        raise _fail("put", "Your metadata headers exceed the maximum allowed metadata size.", 10012)
    return out


def _conditions_hold(only_if: object, stored: StoredObject) -> bool:
    if only_if is None:
        return True
    if not isinstance(only_if, Mapping):
        raise TypeError("onlyIf must be a dict (etagMatches, etagDoesNotMatch, uploadedBefore, uploadedAfter)")
    cond = {_SNAKE.get(str(k), str(k)): v for k, v in only_if.items()}
    if cond.get("etagMatches") is not None and str(cond["etagMatches"]).strip('"') != stored.etag:
        return False
    if cond.get("etagDoesNotMatch") is not None and str(cond["etagDoesNotMatch"]).strip('"') == stored.etag:
        return False
    uploaded = datetime.fromtimestamp(stored.uploaded, UTC)
    before, since = cond.get("uploadedBefore"), cond.get("uploadedAfter")
    if isinstance(before, datetime) and not uploaded < before:
        return False
    return not (isinstance(since, datetime) and not uploaded > since)


def _range(method: str, value: object, size: int) -> tuple[int, int | None]:
    if value is None:
        return 0, None
    if not isinstance(value, Mapping):
        raise TypeError("range must be a dict: {offset, length} or {suffix}")
    if "suffix" in value:
        suffix = int(value["suffix"])
        return max(size - suffix, 0), min(suffix, size)
    offset = int(value.get("offset", 0))
    length = value.get("length")
    if offset < 0 or offset > size or (length is not None and int(length) < 0):
        raise _fail(method, "The requested range is not satisfiable.", 10039)
    return offset, None if length is None else min(int(length), size - offset)


__all__ = ["R2Bucket", "R2Object", "R2ObjectBody"]
