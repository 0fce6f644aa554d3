"""Workers KV: a ``KVNamespace`` over a table of the project's database, with Cloudflare's limits and messages.

The names are the Workers API's (``get``, ``getWithMetadata``, ``put``, ``delete``, ``list``), options given as on
Cloudflare from Python (a dict, or keyword arguments, which Pyodide turns into the options object:
``put(key, value, expirationTtl=60)``), plus snake_case spellings (``get_with_metadata``, ``expiration_ttl``).
Values are stored as bytes; expired pairs are never returned and are deleted now and then.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from typing import Any, Final

from stepstone.bindings.errors import KVError
from stepstone.bindings.values import JsArray, JsObject, ReadableStream, js, read_body
from stepstone.clock import Clock
from stepstone.storage.bindings_base import BindingStore, KVEntry

MAX_KEY_SIZE: Final[int] = 512
MAX_VALUE_SIZE: Final[int] = 25 * 1024 * 1024
MAX_METADATA_SIZE: Final[int] = 1024
MIN_TTL: Final[int] = 60
MIN_CACHE_TTL: Final[int] = 30
MAX_LIST_KEYS: Final[int] = 1000
MAX_BULK_KEYS: Final[int] = 100
_TYPES: Final[dict[str, str]] = {"text": "text", "json": "json", "arrayBuffer": "arrayBuffer", "stream": "stream",
                                 "bytes": "arrayBuffer"}  # fmt: skip
_PURGE_EVERY: Final[int] = 256


def _fail(method: str, status: int, message: str) -> KVError:
    return KVError(f"KV {method} failed: {status} {message}")


def _check_key(method: str, api: str, key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"Failed to execute '{api}' on 'KvNamespace': parameter 1 is not of type 'string'.")
    if key == "":
        raise TypeError("Key name cannot be empty.")
    if key in (".", ".."):
        raise TypeError(f'"{key}" is not allowed as a key name.')
    size = len(key.encode("utf-8", errors="surrogatepass"))
    if size > MAX_KEY_SIZE:
        raise _fail(method, 414, f"UTF-8 encoded length of {size} exceeds key length limit of {MAX_KEY_SIZE}.")
    return key


def _int(value: object) -> float:
    """JavaScript's parseInt / Math.round as miniflare applies them: NaN for anything else."""
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, int | float):
        return float(round(value)) if math.isfinite(value) else math.nan
    if isinstance(value, str):
        digits = value.strip()
        sign = -1 if digits.startswith("-") else 1
        digits = digits.lstrip("+-")
        end = len(digits) - len(digits.lstrip("0123456789"))
        return sign * float(digits[:end]) if end else math.nan
    return math.nan


def _options(positional: object, kwargs: Mapping[str, Any], aliases: Mapping[str, str]) -> dict[str, Any]:
    """One options dict from Cloudflare's positional form (a dict, or a type string for ``get``) and keywords."""
    options: dict[str, Any] = {}
    if isinstance(positional, str):
        options["type"] = positional
    elif isinstance(positional, Mapping):
        options.update({aliases.get(str(k), str(k)): v for k, v in positional.items()})
    elif positional is not None:
        raise TypeError(f"expected an options dict, got {type(positional).__name__}")
    for name, value in kwargs.items():
        options[aliases.get(name, name)] = value
    return options


class KVNamespace:
    """A KV namespace binding (``env.MY_KV``).

    Args:
        store: the binding tables of the project's database.
        namespace: the stored namespace (the ``id`` of ``[[kv_namespaces]]``).
        clock: where "now" comes from, for expirations.
    """

    def __init__(self, store: BindingStore, namespace: str, clock: Clock) -> None:
        self._store = store
        self.namespace = namespace
        self._clock = clock
        self._puts = 0

    def __repr__(self) -> str:
        return f"KVNamespace({self.namespace!r})"

    # -- reads ----------------------------------------------------------------------------------------
    async def get(self, key: str | list[str], options: object = None, **kwargs: Any) -> Any:
        """The value of ``key`` as ``type`` (``text`` by default, ``json``, ``arrayBuffer``/``bytes``,
        ``stream``), or None. A list of keys (at most 100) gives a dict of key → value (None when missing)."""
        opts = _options(options, kwargs, {"cache_ttl": "cacheTtl"})
        if isinstance(key, list):
            return await self._get_bulk(key, opts, with_metadata=False)
        kind = self._type(opts)
        entry = await self._store.kv_get(self.namespace, _check_key("GET", "get", key), now=self._clock.now())
        return None if entry is None else _convert(entry.value, kind)

    async def getWithMetadata(self, key: str | list[str], options: object = None, **kwargs: Any) -> Any:
        """``{value, metadata, cacheStatus}`` for ``key`` (value and metadata None when missing)."""
        opts = _options(options, kwargs, {"cache_ttl": "cacheTtl"})
        if isinstance(key, list):
            return await self._get_bulk(key, opts, with_metadata=True)
        kind = self._type(opts)
        entry = await self._store.kv_get(
            self.namespace, _check_key("GET", "getWithMetadata", key), now=self._clock.now()
        )
        if entry is None:
            return JsObject(value=None, metadata=None, cacheStatus=None)
        metadata = js(json.loads(entry.metadata)) if entry.metadata is not None else None
        return JsObject(value=_convert(entry.value, kind), metadata=metadata, cacheStatus=None)

    get_with_metadata = getWithMetadata

    def _type(self, opts: Mapping[str, Any], *, bulk: bool = False) -> str:
        cache_ttl = opts.get("cacheTtl")
        if cache_ttl is not None and (math.isnan(_int(cache_ttl)) or _int(cache_ttl) < MIN_CACHE_TTL):
            raise _fail("GET", 400, f"Invalid cache_ttl of {cache_ttl}. Cache TTL must be at least {MIN_CACHE_TTL}.")
        kind = opts.get("type", "text")
        if bulk and kind == "stream":
            raise _fail("GET_BULK", 400, '"stream" is not a valid type. Use "json" or "text"')
        if kind not in _TYPES:
            raise TypeError('Unknown response type. Possible types are "text", "arrayBuffer", "json", and "stream".')
        return _TYPES[kind]

    async def _get_bulk(self, keys: list[str], opts: Mapping[str, Any], *, with_metadata: bool) -> dict[str, Any]:
        if not keys:
            raise _fail("GET_BULK", 400, "You must request a minimum of 1 key")
        if len(keys) > MAX_BULK_KEYS:
            raise _fail("GET_BULK", 400, f"You can request a maximum of {MAX_BULK_KEYS} keys")
        for key in keys:
            if not isinstance(key, str) or key in ("", ".", ".."):
                raise _fail("GET_BULK", 400, f"Key name {key} is not legal")
            size = len(key.encode("utf-8", errors="surrogatepass"))
            if size > MAX_KEY_SIZE:
                raise _fail("GET_BULK", 414, f"Encoded length of {size} is too long")
        kind = self._type(opts, bulk=True)
        out: dict[str, Any] = {}
        now = self._clock.now()
        for key in keys:
            entry = await self._store.kv_get(self.namespace, key, now=now)
            value = None if entry is None else _convert(entry.value, kind)
            if with_metadata:
                metadata = js(json.loads(entry.metadata)) if entry is not None and entry.metadata else None
                out[key] = None if entry is None else JsObject(value=value, metadata=metadata)
            else:
                out[key] = value
        return out

    # -- writes ---------------------------------------------------------------------------------------
    async def put(self, key: str, value: object, options: object = None, **kwargs: Any) -> None:
        """Store ``value`` (text, bytes or a stream) under ``key``; options ``expiration`` (epoch seconds),
        ``expirationTtl`` (seconds from now, at least 60) and ``metadata`` (JSON, at most 1024 bytes)."""
        opts = _options(options, kwargs, {"expiration_ttl": "expirationTtl"})
        _check_key("PUT", "put", key)
        data = await read_body(value, what="value") if not isinstance(value, dict | list | int | float) else None
        if data is None:
            raise TypeError(
                "KV put() accepts only strings, ArrayBuffers, ArrayBufferViews, and ReadableStreams as values."
            )
        now = self._clock.now()
        expiration = self._expiration(opts, now)
        if len(data) > MAX_VALUE_SIZE:
            raise _fail("PUT", 413, f"Value length of {len(data)} exceeds limit of {MAX_VALUE_SIZE}.")
        metadata = None
        if opts.get("metadata") is not None:
            try:
                metadata = json.dumps(opts["metadata"], separators=(",", ":"), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise TypeError(f"KV put() metadata must be JSON-serialisable: {exc}") from None
            size = len(metadata.encode("utf-8"))
            if size > MAX_METADATA_SIZE:
                raise _fail("PUT", 413, f"Metadata length of {size} exceeds limit of {MAX_METADATA_SIZE}.")
        await self._store.kv_put(self.namespace, KVEntry(key, data, metadata, expiration))
        self._puts += 1
        if self._puts % _PURGE_EVERY == 0:
            await self._store.kv_purge_expired(now=now)

    def _expiration(self, opts: Mapping[str, Any], now: float) -> float | None:
        ttl_raw, exp_raw = opts.get("expirationTtl"), opts.get("expiration")
        if ttl_raw is not None:
            ttl = _int(ttl_raw)
            if math.isnan(ttl) or ttl <= 0:
                raise _fail("PUT", 400, f"Invalid expiration_ttl of {ttl_raw}. Please specify integer greater than 0.")
            if ttl < MIN_TTL:
                raise _fail(
                    "PUT", 400, f"Invalid expiration_ttl of {ttl_raw}. Expiration TTL must be at least {MIN_TTL}."
                )
            return math.floor(now) + ttl
        if exp_raw is not None:
            exp = _int(exp_raw)
            if math.isnan(exp) or exp <= now:
                raise _fail(
                    "PUT", 400, f"Invalid expiration of {exp_raw}. Please specify integer greater than the current "
                    "number of seconds since the UNIX epoch.",
                )  # fmt: skip
            if exp < now + MIN_TTL:
                raise _fail(
                    "PUT", 400, f"Invalid expiration of {exp_raw}. Expiration times must be at least {MIN_TTL} "
                    "seconds in the future.",
                )  # fmt: skip
            return exp
        return None

    async def delete(self, key: str) -> None:
        """Delete ``key`` (nothing happens when it is missing)."""
        await self._store.kv_delete(self.namespace, _check_key("DELETE", "delete", key))

    async def list(self, options: object = None, **kwargs: Any) -> JsObject:
        """``{keys: [{name, expiration?, metadata?}], list_complete, cursor?}``: keys in byte order, ``prefix``,
        ``limit`` (1 to 1000, default 1000) and the ``cursor`` of the previous page."""
        opts = _options(options, kwargs, {})
        prefix = opts.get("prefix") or ""
        if not isinstance(prefix, str):
            raise TypeError("KV list() prefix must be a string")
        raw_limit = opts.get("limit", MAX_LIST_KEYS)
        limit = _int(raw_limit)
        if math.isnan(limit) or limit < 1:
            raise _fail(
                "GET", 400, f"Invalid key_count_limit of {raw_limit}. Please specify an integer greater than 0."
            )
        if limit > MAX_LIST_KEYS:
            raise _fail(
                "GET", 400, f"Invalid key_count_limit of {raw_limit}. Please specify integer less than {MAX_LIST_KEYS}."
            )
        after = _decode_cursor(opts.get("cursor"))
        keys, more = await self._store.kv_list(
            self.namespace, prefix=prefix, after=after, limit=int(limit), now=self._clock.now()
        )
        items = JsArray()
        for k in keys:
            item = JsObject(name=k.name)
            if k.expiration is not None:
                item["expiration"] = int(k.expiration)
            if k.metadata is not None:
                item["metadata"] = js(json.loads(k.metadata))
            items.append(item)
        result = JsObject(keys=items, list_complete=not more, cacheStatus=None)
        if more and keys:
            result["cursor"] = base64.urlsafe_b64encode(keys[-1].name.encode("utf-8", "surrogatepass")).decode()
        return result


def _decode_cursor(cursor: object) -> str | None:
    if cursor in (None, ""):
        return None
    if not isinstance(cursor, str):
        raise TypeError("KV list() cursor must be a string")
    try:
        return base64.urlsafe_b64decode(cursor.encode("ascii")).decode("utf-8", "surrogatepass")
    except (ValueError, UnicodeError):
        raise _fail("GET", 400, f"Invalid cursor {cursor!r}") from None


def _convert(value: bytes, kind: str) -> Any:
    if kind == "text":
        return value.decode("utf-8", errors="replace")
    if kind == "json":
        return js(json.loads(value.decode("utf-8", errors="replace")))
    if kind == "stream":
        return ReadableStream([value])
    return value


__all__ = ["KVNamespace"]
