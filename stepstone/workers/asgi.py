"""``workers.asgi`` (also importable as ``asgi``, as on Cloudflare): serve an ASGI application from a handler.

``return await asgi.fetch(app, request.js_object, self.env)`` runs a FastAPI or Starlette ``app`` on the request;
the app finds the env in ``request.scope["env"]``. The response streams: the app's body chunks reach the client
as it sends them. Lifespan events are not sent (Cloudflare sends them once per isolate; here there is no
isolate to start).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

from stepstone.workers.body import make_headers
from stepstone.workers.entrypoints import Context
from stepstone.workers.request import Request
from stepstone.workers.response import Response

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def request_to_scope(request: Request, env: Any) -> Scope:
    """The ASGI HTTP scope of ``request``, with ``env`` under ``"env"`` (Cloudflare's key)."""
    url = urlsplit(request.url)
    port = url.port or (443 if url.scheme == "https" else 80)
    headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in request.headers.items()]
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": str(request.method),
        "scheme": url.scheme or "http",
        "path": unquote(url.path or "/"),
        "raw_path": (url.path or "/").encode("latin-1", errors="replace"),
        "query_string": url.query.encode("latin-1", errors="replace"),
        "root_path": "",
        "headers": headers,
        "server": (url.hostname or "localhost", port),
        "client": None,
        "env": env,
    }


async def fetch(app: ASGIApp, req: Request, env: Any, ctx: Context | None = None) -> Response:
    """Run ``app`` on ``req`` and return its response (the body streams while the app sends it).

    Raises:
        Exception: what the app raised before it started its response.
    """
    body = req.body
    request_done = False
    finished = asyncio.Event()

    async def receive() -> Message:
        nonlocal body, request_done
        if body is not None:
            try:
                return {"type": "http.request", "body": await anext(body), "more_body": True}
            except StopAsyncIteration:
                body = None
        if not request_done:
            request_done = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    started: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
    chunks: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def send(message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start" and not started.done():
            started.set_result(message)
        elif kind == "http.response.body":
            data = bytes(message.get("body", b""))
            if data:
                await chunks.put(data)
            if not message.get("more_body", False):
                await chunks.put(None)

    async def run() -> None:
        try:
            await app(request_to_scope(req, env), receive, send)
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
            raise
        finally:
            await chunks.put(None)
            finished.set()
            if not started.done():
                started.set_exception(RuntimeError("the ASGI application returned without sending a response"))

    task = asyncio.ensure_future(run())
    try:
        start = await started
    except BaseException:
        with contextlib.suppress(BaseException):
            await task
        raise

    async def stream() -> AsyncIterator[bytes]:
        try:
            while (chunk := await chunks.get()) is not None:
                yield chunk
        finally:
            finished.set()
            if not task.done():
                task.cancel()
            with contextlib.suppress(BaseException):
                await task

    headers = make_headers([(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])])
    return Response._received(int(start.get("status", 200)), headers, b"", "", False)._with_stream(stream())


__all__ = ["ASGIApp", "fetch", "request_to_scope"]
