"""How long a connection may take to say what it wants, and how many may be open at once.

uvicorn closes a keep-alive connection that stays idle between requests (``timeout_keep_alive``), and bounds
the size of a request head (h11's ``max_incomplete_event_size``), but nothing else stops a client that connects
and then sends nothing, or sends its headers a byte at a time (slowloris): each such socket holds a file
descriptor for as long as the client likes. Its ``limit_concurrency`` answers 503 to requests over the limit
but still accepts and keeps every socket. The HTTP protocol here adds both missing bounds:

- a **header deadline**: a connection that has not sent a complete request head within
  :attr:`ConnectionLimits.header_timeout` seconds of connecting (or of its previous response) is closed;
- a **body deadline** at the connection: a request whose body is still incoming twice
  :attr:`ConnectionLimits.body_timeout` after its head arrived is closed, also when its route never reads a
  body (a ``GET`` with a ``Content-Length``, trickled a byte at a time, would otherwise hold the connection
  after the answer, uvicorn's keep-alive timer being reset by every byte); a route that reads its body answers
  ``408`` at ``body_timeout`` first (:func:`stepstone.server.body.read_body`);
- a **connection cap**: beyond :attr:`ConnectionLimits.max_connections` open connections, a new one is
  answered ``503`` at once and closed, so idle sockets cannot exhaust the process's file descriptors.

"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("stepstone.server")


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Time and count limits on the server's connections.

    Attributes:
        header_timeout: seconds a connection has to send a complete request head (default 10).
        body_timeout: seconds a request has to send its whole body once its head arrived (default 30).
        keep_alive: seconds an idle keep-alive connection stays open between requests (default 5).
        max_connections: open connections at most; more are answered 503 and closed (default 256).
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keep_alive: int = 5
    max_connections: int = 256

    def __post_init__(self) -> None:
        for name in ("header_timeout", "body_timeout", "keep_alive"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ConnectionLimits.{name} must be a positive number of seconds, got {value!r}")
        if not isinstance(self.max_connections, int) or self.max_connections < 1:
            raise ValueError(f"ConnectionLimits.max_connections must be at least 1, got {self.max_connections!r}")


_BUSY = json.dumps(
    {
        "success": False,
        "errors": [{"code": 10001, "message": "the server has too many open connections: retry shortly"}],
        "messages": [],
        "result": None,
    }
).encode()
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b"retry-after: 1\r\ncontent-length: " + str(len(_BUSY)).encode() + b"\r\n\r\n" + _BUSY
)


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the header deadline and the connection cap of ``limits``."""

    last_full: list[float] = []  # when a refusal was last logged, for the whole server

    class GuardedProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            if len(self.connections) >= limits.max_connections:
                self._refused = True
                now = self.loop.time()
                if not last_full or now - last_full[0] > 10:  # once per burst: a flood must not flood the log
                    last_full[:] = [now]
                    log.warning("refusing new connections: %d are open, the cap", limits.max_connections)
                assert isinstance(transport, asyncio.Transport)
                transport.write(_BUSY_RESPONSE)
                transport.close()
                return
            super().connection_made(transport)  # type: ignore[arg-type]
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._refused:
                return
            self._disarm_header_timer()
            self._disarm_body_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return
            super().data_received(data)
            state = self.conn.their_state
            if state is not h11.IDLE:
                self._disarm_header_timer()  # the request head is in: the body has its own deadline
            if state is h11.SEND_BODY:
                if self._body_timer is None:
                    self._body_timer = self.loop.call_later(2 * limits.body_timeout, self._body_deadline)
            else:
                self._disarm_body_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm_header_timer()

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(limits.header_timeout, self._header_deadline)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _disarm_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_deadline(self) -> None:
            self._body_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
                return
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
            log.info("closed the connection of %s: no complete request body in %gs", peer, 2 * limits.body_timeout)
            self.transport.close()

        def _header_deadline(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
                return
            if self.conn.trailing_data[0]:  # part of a head arrived: say why before closing
                peer = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
                log.info("closed the connection of %s: no complete request head in %gs", peer, limits.header_timeout)
            self.transport.close()

    return GuardedProtocol
