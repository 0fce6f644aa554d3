"""Reading requests: JSON bodies under a size cap, and typed query parameters.

A body is refused from its ``Content-Length`` before it is read, and counted while it streams (a chunked
body has no length), so no request can make the server buffer more than the cap. It must arrive whole within a
deadline (:attr:`~stepstone.server.connections.ConnectionLimits.body_timeout`), so a body sent a byte a minute,
or a ``Content-Length`` whose bytes never come, cannot hold the request open.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from starlette.requests import Request

from stepstone.server.envelope import BODY_TIMEOUT, TOO_LARGE, ApiError, bad_request

MARGIN: Final = 64 * 1024
"""Room over the payload limit for the JSON around a payload (ids, options, escaping)."""


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def read_body(request: Request, cap: int, timeout: float) -> bytes:
    """The raw body, at most ``cap`` bytes (413 beyond, without reading further), within ``timeout`` seconds
    (408 after)."""
    length = request.headers.get("content-length")
    if length is not None:
        if not length.strip().isdigit():
            raise bad_request(f"the Content-Length header {length[:40]!r} is not a number")
        if int(length) > cap:
            raise ApiError(413, TOO_LARGE, f"the request body is {int(length)} bytes, over the cap of {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > cap:
                    raise ApiError(413, TOO_LARGE, f"the request body is over the cap of {cap} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408, BODY_TIMEOUT, f"the request body did not arrive within {timeout:g}s ({size} bytes came): send it whole"
        ) from None
    return b"".join(chunks)


async def read_json(request: Request, cap: int, timeout: float, *, empty: Any = ...) -> Any:
    """The body parsed as JSON; an empty body gives ``empty`` (400 when not given)."""
    raw = await read_body(request, cap, timeout)
    if not raw.strip():
        if empty is ...:
            raise bad_request("the request body is empty: send a JSON document")
        return empty
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise bad_request(f"the request body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise bad_request(
            f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError as exc:
        raise bad_request(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise bad_request("the request body is nested too deeply") from None


def json_object(value: Any, what: str) -> dict[str, Any]:
    """``value`` as a JSON object, or a 400 naming ``what``."""
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be a JSON object, got {_kind(value)}")
    return value


def only_keys(body: Mapping[str, Any], allowed: tuple[str, ...], what: str) -> None:
    """400 when ``body`` has keys outside ``allowed``."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise bad_request(f"{what}: unknown field(s) {unknown}; expected only {list(allowed)}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "a number")


def query_int(request: Request, name: str, default: int, *, low: int, high: int) -> int:
    """An integer query parameter in ``[low, high]`` (``25.0`` is accepted: the SDK types pages as floats)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        number = float(raw)
    except ValueError:
        raise bad_request(f"query parameter {name}={raw[:40]!r} is not a number") from None
    if not number.is_integer() or not low <= number <= high:
        raise bad_request(f"query parameter {name}={raw[:40]!r} must be an integer from {low} to {high}")
    return int(number)


def query_choice(request: Request, name: str, choices: tuple[str, ...], default: str | None) -> str | None:
    """A query parameter that must be one of ``choices``."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if raw not in choices:
        raise bad_request(f"query parameter {name}={raw[:40]!r} must be one of {', '.join(choices)}")
    return raw


def query_time(request: Request, name: str) -> float | None:
    """An ISO-8601 query parameter as epoch seconds; no offset means UTC (``2024-01-01T00:00:00``, ``...Z``)."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        parsed = datetime.fromisoformat(raw.replace("z", "Z"))
    except ValueError:
        raise bad_request(
            f"query parameter {name}={raw[:40]!r} is not an ISO-8601 time such as 2024-01-01T00:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()
