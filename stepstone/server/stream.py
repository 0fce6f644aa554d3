"""``GET .../instances/{instance_id}/subscribe``: the instance event stream over HTTP, as server-sent events.

Each event is one SSE message: ``id:`` its ``eventId``, ``event:`` its type, ``data:`` the event as JSON (the
same dict ``WorkflowInstance.subscribe()`` yields). The stream first sends the recorded events, then live ones,
and the server closes it after the terminal event. Query parameters: ``cursor`` (start after this eventId) and
``filter`` (event types, comma-separated or repeated). A client that reconnects with ``cursor`` set to the last
``id`` it processed (or the ``Last-Event-ID`` header an ``EventSource`` sends by itself) loses nothing and sees
nothing twice. A comment line every 15 s keeps idle proxies from closing a quiet stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from stepstone.server.body import query_int
from stepstone.server.envelope import bad_request
from stepstone.server.state import scope_of

log = logging.getLogger("stepstone.server")

KEEPALIVE_S: Final = 15.0
MAX_CURSOR: Final = 2**53


def _filter(request: Request) -> list[str] | None:
    values = [t.strip() for raw in request.query_params.getlist("filter") for t in raw.split(",")]
    types = [t for t in values if t]
    return types or None


def _cursor(request: Request) -> int | None:
    if request.query_params.get("cursor"):
        return query_int(request, "cursor", 0, low=0, high=MAX_CURSOR)
    last = request.headers.get("last-event-id", "").strip()
    if not last:
        return None
    if not last.isdigit() or int(last) > MAX_CURSOR:
        raise bad_request(f"header Last-Event-ID={last[:40]!r} must be an eventId (an integer from 0)")
    return int(last)


def sse(event: dict[str, Any]) -> bytes:
    """One event as a server-sent-events message."""
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
    return f"id: {event['eventId']}\nevent: {event['type']}\ndata: {data}\n\n".encode()


async def subscribe(request: Request) -> Response:
    """``GET /instances/{id}/subscribe?cursor=&filter=``: the instance's events as ``text/event-stream``."""
    scope = scope_of(request)  # the account in the path: another account's instance is a 404
    handle, _ = await scope.instance(request.path_params["workflow_name"], request.path_params["instance_id"])
    events = handle.subscribe(filter=_filter(request), cursor=_cursor(request))  # ValidationError: a 400
    return StreamingResponse(
        _body(events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _body(events: AsyncIterator[dict[str, Any]]) -> AsyncIterator[bytes]:
    iterator = aiter(events)
    pending: asyncio.Task[dict[str, Any]] | None = None
    try:
        yield b": stepstone instance events\n\n"
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(iterator))
            done, _ = await asyncio.wait({pending}, timeout=KEEPALIVE_S)
            if not done:
                yield b": keep-alive\n\n"
                continue
            task, pending = pending, None
            try:
                event = task.result()
            except StopAsyncIteration:
                return
            except Exception:  # the database went away mid-stream: end it, the client resumes from its cursor
                log.exception("instance event stream failed")
                return
            yield sse(event)
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
