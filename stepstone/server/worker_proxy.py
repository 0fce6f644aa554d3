"""``stepstone dev``'s route to the Worker: every request the API does not own goes to the worker child's
``fetch`` port, and its answer comes back as it streams.

The dev process never imports the project's code, so the Worker's ``fetch`` runs in the worker child (the
process that runs the instances, with the same ``env``), which serves it on a loopback port. While the child
restarts after an edit, a request waits for it (up to :data:`RESTART_WAIT` seconds) instead of failing; a child
that stays down (its code does not import) is a 503 saying so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RESTART_WAIT = 15.0
"""Seconds a request waits for a restarting worker child before the 503."""
MAX_BODY_BYTES = 100 * 1024 * 1024
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer", "date", "server"}
)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body (read first, so a request can be retried while the child restarts); None if over
    ``limit``."""
    parts: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = bytes(message.get("body", b""))
        total += len(chunk)
        if total > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(parts)


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    headers = [(b"content-type", b"text/plain;charset=UTF-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class WorkerProxy:
    """An ASGI application forwarding HTTP requests to ``target`` (``http://127.0.0.1:PORT``).

    Args:
        target: the worker child's fetch server.
        restart_wait: seconds to keep retrying a refused connection.
    """

    def __init__(self, target: str, *, restart_wait: float = RESTART_WAIT) -> None:
        self.target = target.rstrip("/")
        self.restart_wait = restart_wait

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        body = await _read_body(receive, MAX_BODY_BYTES)
        if body is None:
            await _plain(send, 413, f"Payload Too Large: the request body is over {MAX_BODY_BYTES} bytes")
            return
        path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
        query = scope.get("query_string", b"").decode("latin-1")
        url = self.target + path + ("?" + query if query else "")
        headers = [(k, v) for k, v in scope.get("headers", []) if k.decode("latin-1").lower() not in _HOP_BY_HOP]
        client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=2.0))
        try:
            answer = await self._send(client, scope["method"], url, headers, body)
            if answer is None:
                await _plain(
                    send,
                    503,
                    "stepstone dev: the Worker is not running (it restarts after a change to the code, or its code "
                    "does not import: see the output of stepstone dev)",
                )
                return
            out = [
                (k.encode("latin-1"), v.encode("latin-1"))
                for k, v in answer.headers.multi_items()
                if k.lower() not in _HOP_BY_HOP
            ]
            await send({"type": "http.response.start", "status": answer.status_code, "headers": out})
            try:
                async for chunk in _chunks(answer):
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            finally:
                await answer.aclose()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await client.aclose()

    async def _send(
        self, client: httpx.AsyncClient, method: str, url: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> httpx.Response | None:
        deadline = time.monotonic() + self.restart_wait
        while True:
            request = client.build_request(method, url, headers=headers, content=body)
            try:
                return await client.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout):
                if time.monotonic() >= deadline:
                    return None
                await asyncio.sleep(0.1)


async def _chunks(answer: httpx.Response) -> AsyncIterator[bytes]:
    async for chunk in answer.aiter_raw():
        if chunk:
            yield chunk


__all__ = ["WorkerProxy"]
