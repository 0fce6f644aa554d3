"""The instance page's live channel: the instance's event stream (``WorkflowInstance.subscribe``) relayed to the
browser as server-sent events, coalesced into ``change`` notices.

The page does not render events itself: each ``change`` makes htmx fetch the live fragment again (``sse:change``
on ``#live``), which is the same fragment polling fetches, so the stream and the fallback poll can never show
different things. A burst of events (the recorded ones at connect, a fan-out of steps) becomes one notice per
:data:`COALESCE_S`. The stream ends after the instance's terminal event, with a last ``change`` so the page
shows the end; an instance already finished answers 204, which tells an ``EventSource`` not to reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, Final

from starlette.responses import Response, StreamingResponse

from stepstone.errors import InstanceNotFoundError
from stepstone.instance import WorkflowInstance

COALESCE_S: Final = 0.05
"""Events closer together than this become one ``change`` notice."""
KEEPALIVE_S: Final = 15.0
"""A comment line this often while nothing happens, so proxies and the server's idle limits keep the stream."""

_END: Final = object()
_log = logging.getLogger("stepstone.dashboard")


def change_stream(handle: WorkflowInstance, *, finished: bool) -> Response:
    """The ``?fragment=stream`` answer of an instance page."""
    if finished:
        return Response(status_code=204)
    return StreamingResponse(
        _notices(handle),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _notices(handle: WorkflowInstance) -> AsyncIterator[bytes]:
    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in handle.subscribe():
                queue.put_nowait(event)
        except InstanceNotFoundError:
            pass  # deleted while the page was open: the stream just ends
        except Exception:
            # The page falls back to polling; the failure must still be visible to whoever runs the server.
            _log.exception("the live channel of instance %s stopped", handle.id)
        finally:
            queue.put_nowait(_END)

    task = asyncio.create_task(pump())
    try:
        yield b": stepstone live\n\n"
        pending: list[str] = []
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), COALESCE_S if pending else KEEPALIVE_S)
            except TimeoutError:
                if pending:
                    yield _change(pending)
                    pending = []
                else:
                    yield b": keep-alive\n\n"
                continue
            if item is _END:
                yield _change(pending or ["end"])
                yield b"event: end\ndata: end\n\n"
                return
            pending.append(str(item.get("type", "")))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _change(types: list[str]) -> bytes:
    """One ``change`` notice naming the event types it stands for (the page only needs to know "something")."""
    return f"event: change\ndata: {' '.join(dict.fromkeys(types))}\n\n".encode()
