"""Serving the Worker's ``fetch`` as an ASGI application.

Each HTTP request becomes a :class:`~stepstone.workers.Request` (the full URL from the ``Host`` header, the body
read as the handler reads it, at most :data:`MAX_BODY_BYTES`), the handler runs on a new ``Default(ctx, env)``,
and its :class:`~stepstone.workers.Response` is sent (streamed when its body is a stream). ``ctx.wait_until`` work
runs on after the response is sent. A handler that raises answers 500, with the traceback in the body when
``debug`` (``stepstone dev``, as ``wrangler dev`` shows it) and a bare message otherwise (``stepstone serve``); the
traceback is logged either way. A ``Default`` that is an ASGI application is called as it is, with the env in
``scope["env"]`` (Cloudflare's key).
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from stepstone.runtime.handlers import WorkerRuntime
from stepstone.workers.request import Request
from stepstone.workers.response import Response

log = logging.getLogger("stepstone.runtime")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY_BYTES = 100 * 1024 * 1024
"""The largest request body a handler may read: Cloudflare's limit on the Free and Pro plans (100 MB)."""


class BodyTooLargeError(Exception):
    """The client sent more than :data:`MAX_BODY_BYTES`."""


def request_url(scope: Scope) -> str:
    """The full URL of an ASGI request, as ``request.url`` is on Cloudflare (scheme, host, path, query)."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    host = headers.get("host")
    if not host:
        server = scope.get("server") or ("localhost", 80)
        host = f"{server[0]}:{server[1]}"
    path = scope.get("raw_path") or scope.get("path", "/").encode()
    query = scope.get("query_string", b"")
    url = f"{scope.get('scheme', 'http')}://{host}{path.decode('latin-1')}"
    return url + ("?" + query.decode("latin-1") if query else "")


async def _body(receive: Receive, limit: int) -> AsyncIterator[bytes]:
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = bytes(message.get("body", b""))
        total += len(chunk)
        if total > limit:
            raise BodyTooLargeError(f"the request body is over {limit} bytes")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


TEST_SCHEDULED_PATHS = ("/__scheduled", "/cdn-cgi/handler/scheduled")
"""Where ``wrangler dev --test-scheduled`` runs the ``scheduled`` handler on request (``?cron=...&time=ms``)."""


def worker_app(
    runtime: WorkerRuntime, *, debug: bool = False, max_body: int = MAX_BODY_BYTES, test_scheduled: bool = False
) -> ASGIApp:
    """The ASGI application serving ``runtime``'s ``fetch`` (or its ASGI ``Default``).

    Args:
        debug: a raising handler answers its traceback.
        max_body: the largest request body, in bytes.
        test_scheduled: ``GET /__scheduled?cron=...`` runs the ``scheduled`` handler, as under
            ``wrangler dev --test-scheduled``.
    """
    background: set[asyncio.Task[None]] = set()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if test_scheduled and scope["type"] == "http" and scope.get("path") in TEST_SCHEDULED_PATHS:
            await _send(await _run_scheduled(runtime, scope), send)
            return
        if runtime.asgi_app is not None:
            await runtime.asgi_app({**scope, "env": runtime.env}, receive, send)
            return
        if scope["type"] != "http":  # websockets: not supported
            await send({"type": "websocket.close", "code": 1003})
            return
        headers = http.client.HTTPMessage()
        for name, value in scope.get("headers", []):
            headers[name.decode("latin-1")] = value.decode("latin-1")
        more = any(k == b"content-length" and v != b"0" for k, v in scope.get("headers", [])) or any(
            k == b"transfer-encoding" for k, _ in scope.get("headers", [])
        )
        source = _body(receive, max_body) if more else None
        request = Request._incoming(request_url(scope), scope.get("method", "GET"), headers, source)
        ctx = runtime.context()
        try:
            response = await runtime.fetch(request, ctx)
        except BodyTooLargeError as exc:
            response = Response(f"Payload Too Large: {exc}", status=413)
        except Exception as exc:
            log.error("%s %s: the fetch handler raised %s: %s", scope.get("method"), scope.get("path"),
                      type(exc).__name__, exc, exc_info=exc)  # fmt: skip
            text = traceback.format_exc() if debug else "Internal Server Error: the Worker's fetch handler raised"
            response = Response(text, status=500)
        try:
            await _send(response, send)
        finally:
            task = asyncio.ensure_future(ctx.drain())
            background.add(task)
            task.add_done_callback(background.discard)

    return app


async def _run_scheduled(runtime: WorkerRuntime, scope: Scope) -> Response:
    from urllib.parse import parse_qs

    from stepstone.runtime.scheduled import ScheduledController

    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    cron = query.get("cron", [""])[0]
    raw_time = query.get("time", [""])[0]
    if raw_time and not raw_time.isdigit():
        return Response(f"time must be milliseconds since the epoch, got {raw_time!r}", status=400)
    when = int(raw_time) if raw_time else int(time.time() * 1000)
    if not runtime.has_handler("scheduled"):
        return Response(f"{runtime.name} has no scheduled handler", status=404)
    try:
        await runtime.scheduled(ScheduledController(when, cron))
    except Exception as exc:
        log.error("scheduled(%r) raised %s: %s", cron, type(exc).__name__, exc, exc_info=exc)
        return Response(f"the scheduled handler raised {type(exc).__name__}: {exc}", status=500)
    return Response("Ran scheduled event")


async def _send(response: Response, send: Send) -> None:
    raw = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in response.headers.items()]
    source = response._stream
    if isinstance(source, bytes) or source is None:
        data = source or b""
        if not any(k == b"content-length" for k, _ in raw):
            raw.append((b"content-length", str(len(data)).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": raw})
        await send({"type": "http.response.body", "body": data, "more_body": False})
        return
    await send({"type": "http.response.start", "status": response.status, "headers": raw})
    try:
        async for chunk in source:
            if chunk:
                await send({"type": "http.response.body", "body": bytes(chunk), "more_body": True})
    finally:
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


__all__ = ["MAX_BODY_BYTES", "ASGIApp", "request_url", "worker_app"]
