"""Running the API with uvicorn inside the caller's event loop, until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator, Sequence

import uvicorn

from stepstone.engine import Engine
from stepstone.errors import ValidationError
from stepstone.server.app import ASGIApp, create_app
from stepstone.server.auth import TokenRule, is_loopback_host
from stepstone.server.connections import ConnectionLimits, guarded_protocol

log = logging.getLogger("stepstone.server")


class _Server(uvicorn.Server):
    """uvicorn, minus its signal handling (the embedding program owns signals) and its ``sys.exit`` on
    startup failure (we bind the socket ourselves first), setting ``ready`` once listening."""

    def __init__(self, config: uvicorn.Config, ready: asyncio.Event | None) -> None:
        super().__init__(config)
        self._ready = ready

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self._ready is not None:
            self._ready.set()


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ValidationError(f"cannot listen on {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ValidationError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.setblocking(False)
    return sock


async def serve(
    engine: Engine,
    *,
    host: str = "127.0.0.1",
    port: int = 8787,
    tokens: Sequence[TokenRule] | None = None,
    ready: asyncio.Event | None = None,
    metrics_also: Sequence[str] = (),
    limits: ConnectionLimits | None = None,
    worker: ASGIApp | None = None,
) -> None:
    """Serve the REST API until cancelled; the engine must be started by the caller.

    Args:
        engine: the engine to serve (a worker in it is optional).
        host: the address to listen on; beyond loopback, ``tokens`` are required.
        port: the port (0 picks a free one; the log line names it).
        tokens: API tokens and their accounts; none accepts any token, on loopback only.
        ready: set once the server accepts connections.
        metrics_also: ``/metrics`` URLs of other processes merged into this server's ``/metrics``.
        limits: request deadlines and the connection cap (:class:`ConnectionLimits`' defaults when None).
        worker: serves every path the API does not (the project's Worker, :func:`~stepstone.server.create_app`).

    Raises:
        InsecureServerError: a non-loopback ``host`` with no ``tokens``.
        ValidationError: the address cannot be listened on (in use, unknown host).
    """
    loopback = is_loopback_host(host)
    limits = limits or ConnectionLimits()
    app = create_app(
        engine, tokens=tokens, loopback_only=loopback, metrics_also=metrics_also, limits=limits, worker=worker
    )
    sock = _bind(host, port)
    bound = sock.getsockname()
    where = f"http://{'[' + bound[0] + ']' if ':' in bound[0] else bound[0]}:{bound[1]}"
    if tokens:
        log.info("REST API on %s (%d API token(s) configured)", where, len(tokens))
    else:
        log.warning("REST API on %s: no API tokens configured, accepting any token from loopback only", where)
    await _serve_socket(app, sock, ready, limits)


async def serve_app(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ready: asyncio.Event | None = None,
    limits: ConnectionLimits | None = None,
) -> None:
    """Serve any ASGI application (the Worker's ``fetch`` in ``stepstone worker --fetch-port``) until cancelled,
    with the API's connection limits.

    Raises:
        ValidationError: the address cannot be listened on.
    """
    limits = limits or ConnectionLimits()
    sock = _bind(host, port)
    bound = sock.getsockname()
    log.info("the Worker's fetch handler on http://%s:%s", bound[0], bound[1])
    await _serve_socket(app, sock, ready, limits)


async def _serve_socket(
    app: ASGIApp, sock: socket.socket, ready: asyncio.Event | None, limits: ConnectionLimits
) -> None:
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        http=guarded_protocol(limits),
        timeout_keep_alive=limits.keep_alive,
    )
    server = _Server(config, ready)
    task = asyncio.ensure_future(server.serve(sockets=[sock]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        raise
    finally:
        sock.close()
