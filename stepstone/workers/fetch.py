"""``workers.fetch``: an outgoing HTTP request from a Worker, over httpx."""

from __future__ import annotations

from http import HTTPMethod
from typing import Any

import httpx

from stepstone.workers.body import BodyInit, HeadersInit, make_headers
from stepstone.workers.request import Request
from stepstone.workers.response import Response

DEFAULT_TIMEOUT = 100.0
"""Seconds before an outgoing request gives up (Cloudflare has no fixed limit; a hung peer must not hang us)."""


async def fetch(
    resource: str | Request,
    *,
    method: str | HTTPMethod | None = None,
    headers: HeadersInit = None,
    body: BodyInit = None,
    redirect: str | None = None,
    **other: Any,
) -> Response:
    """Send a request and return the whole response (the Fetch API's ``fetch``, as the Python Workers SDK has it).

    Args:
        resource: a URL, or a :class:`~stepstone.workers.Request`.
        method, headers, body, redirect: as for :class:`~stepstone.workers.Request`; ``redirect="manual"`` returns
            a redirect instead of following it, ``"error"`` raises on one.
        other: other Fetch options (``cf``...), accepted and ignored.

    Raises:
        OSError: the request could not be sent or answered (as Pyodide's ``pyfetch``), or a redirect with
            ``redirect="error"``.
    """
    request = Request(resource, method=method, headers=headers, body=body, redirect=redirect, **other)
    content = await request.bytes() if request._source is not None else None
    follow = request.redirect == "follow"
    try:
        async with httpx.AsyncClient(follow_redirects=follow, timeout=DEFAULT_TIMEOUT) as client:
            answer = await client.request(
                str(request.method), request.url, headers=list(request.headers.items()), content=content
            )
            data = await answer.aread()
    except httpx.HTTPError as exc:
        raise OSError(f"fetch {request.url}: {exc}") from exc
    if request.redirect == "error" and answer.is_redirect:
        raise OSError(f"fetch {request.url}: unexpected redirect to {answer.headers.get('location', '?')}")
    received = make_headers(
        [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in ("content-encoding", "content-length")]
    )
    return Response._received(
        answer.status_code, received, data, str(answer.url), bool(answer.history), answer.reason_phrase
    )
