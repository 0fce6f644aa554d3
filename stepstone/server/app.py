"""The Starlette application: routes, authentication, and the envelope on every answer."""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from stepstone import __version__
from stepstone.engine import Engine
from stepstone.server import instances as inst
from stepstone.server import stream
from stepstone.server import workflows as wf
from stepstone.server.auth import Authenticator, TokenRule
from stepstone.server.body import MARGIN
from stepstone.server.connections import ConnectionLimits
from stepstone.server.dashboard import Sessions, dashboard_routes, mounted_routes
from stepstone.server.envelope import (
    BAD_METHOD,
    NO_ROUTE,
    ApiError,
    api_error_for,
    error_response,
    log_failure,
    ok,
)
from stepstone.server.explorer import PREFIXES, explorer_routes
from stepstone.server.openapi import openapi_document
from stepstone.server.state import Handler, ServerState, state_of

log = logging.getLogger("stepstone.server")

V4 = "/client/v4/accounts/{account_id}/workflows"
DASHBOARD_PREFIX = "/cdn-cgi/stepstone"
"""Where the dashboard also lives, and the only place it lives beside a Worker (which owns every path the API does
not). ``/cdn-cgi/`` is the prefix Cloudflare keeps for itself: no Worker ever serves it there either."""

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[MutableMapping[str, Any]]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]


def _authorize(request: Request, *, account: str | None, any_account: bool = False) -> frozenset[str]:
    return state_of(request).auth.authorize(
        account=account,
        any_account=any_account,
        authorization=request.headers.get("authorization"),
        host=request.headers.get("host"),
        origin=request.headers.get("origin"),
        client=request.client.host if request.client else None,
    )


def _guarded(handler: Handler, *, account: bool = True) -> Handler:
    """Authenticate, run the handler, and turn any exception into an error envelope (logged once)."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            _authorize(request, account=request.path_params.get("account_id") if account else None)
            return await handler(request)
        except Exception as exc:
            error = api_error_for(exc)
            log_failure(log, request, exc, error)
            return error_response(error)

    return endpoint


async def health(request: Request) -> Response:
    """``GET /health``: the database answers.

    Liveness (``{"status": "ok"}``) is for anyone a token-protected server answers; the version and the workflow
    count only for a request every other route would accept (a token allowed every account, or, on an open
    server, a loopback client addressing a loopback host from no foreign origin). An open server refuses the
    rest (403), as every route does, so a page of another origin reached by DNS rebinding learns nothing.
    """
    state = state_of(request)
    try:
        _authorize(request, account=None)
    except ApiError as error:
        if state.auth.open:
            log_failure(log, request, error, error)
            return error_response(error)
        return ok({"status": "ok"})
    try:
        workflows = await state.engine.list_workflows(every_account=True)
    except Exception as exc:
        return error_response(api_error_for(exc))
    return ok({"status": "ok", "version": __version__, "workflows": len(workflows)})


async def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus' text format (this process's, plus those of ``metrics_also``)."""
    state = state_of(request)
    if state.engine.metrics is None:
        raise ApiError(404, NO_ROUTE, "metrics are off: install stepstone[metrics] (prometheus-client)")
    from stepstone.observe.metrics import CONTENT_TYPE, merge_expositions

    body = await state.engine.metrics.exposition()
    if state.metrics_also:
        texts = [body.decode()]
        async with httpx.AsyncClient(timeout=5) as client:
            for url in state.metrics_also:
                try:
                    answer = await client.get(url)
                except httpx.HTTPError:
                    continue  # the worker is restarting: its metrics are back at the next scrape
                if answer.status_code == 200:
                    texts.append(answer.text)
        body = merge_expositions(texts)
    return Response(body, media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``."""
    return JSONResponse(openapi_document())


async def memberships(request: Request) -> Response:
    """``GET /client/v4/memberships``: what wrangler asks when it is given no account id."""
    try:
        accounts = _authorize(request, account=None, any_account=True)
    except ApiError as error:
        log_failure(log, request, error, error)
        return error_response(error)
    ids = sorted(a for a in accounts if a != "*") or ["local"]
    result = [{"id": a, "account": {"id": a, "name": a}, "status": "accepted"} for a in ids]
    return ok(result, result_info=wf.page_info(1, max(1, len(result)), len(result), len(result)))


def _v4_routes() -> list[tuple[str, str, Handler]]:
    name = V4 + "/{workflow_name}"
    one = name + "/instances/{instance_id}"
    return [
        ("GET", V4, wf.list_workflows),
        ("GET", V4 + "/", wf.list_workflows),
        ("GET", name, wf.get_workflow),
        ("PUT", name, wf.put_workflow),
        ("DELETE", name, wf.delete_workflow),
        ("GET", name + "/versions", wf.list_versions),
        ("GET", name + "/versions/{version_id}", wf.get_version),
        ("GET", name + "/versions/{version_id}/graph", wf.version_graph),
        ("POST", name + "/instances", inst.create_instance),
        ("GET", name + "/instances", inst.list_instances),
        ("GET", name + "/instances/", inst.list_instances),
        ("POST", name + "/instances/batch", inst.create_batch),
        ("POST", name + "/instances/batch/delete", inst.batch_delete),
        ("PUT", name + "/instances/terminate", inst.terminate_by_status),
        ("GET", one, inst.get_instance),
        ("GET", one + "/step", inst.get_step),
        ("PATCH", one + "/status", inst.patch_status),
        ("GET", one + "/status", inst.get_status),
        ("POST", one + "/events", inst.post_event_object),
        ("POST", one + "/events/{event_type}", inst.post_event),
        ("GET", one + "/subscribe", stream.subscribe),
    ]


def _routes() -> list[Route]:
    table: dict[str, list[tuple[str, Handler, bool]]] = {}
    for method, path, handler in _v4_routes():
        table.setdefault(path, []).append((method, handler, True))
    for prefix in PREFIXES:
        for method, path, handler in explorer_routes():
            table.setdefault(prefix + path, []).append((method, handler, False))
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/metrics", _guarded(metrics, account=False), methods=["GET"]),
        Route("/client/v4/memberships", memberships, methods=["GET"]),
    ]
    for path, entries in table.items():
        for method, handler, account in entries:
            routes.append(Route(path, _guarded(handler, account=account), methods=[method], name=f"{method} {path}"))
    return routes


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = ApiError(404, NO_ROUTE, f"no route for {request.method} {request.url.path[:200]}: see /openapi.json")
    elif exc.status_code == 405:
        error = ApiError(405, BAD_METHOD, f"method {request.method} is not allowed on {request.url.path[:200]}")
    else:
        error = ApiError(exc.status_code, NO_ROUTE, str(exc.detail))
    response = error_response(error)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected(request: Request, exc: Exception) -> Response:
    error = api_error_for(exc)
    log_failure(log, request, exc, error)
    return error_response(error)


def create_app(
    engine: Engine,
    *,
    tokens: Sequence[TokenRule] | None = None,
    loopback_only: bool,
    metrics_also: Sequence[str] = (),
    limits: ConnectionLimits | None = None,
    worker: ASGIApp | None = None,
) -> Starlette:
    """The REST API and the dashboard over an engine (started by the caller), and ``/metrics`` when prometheus-client
    is installed.

    With ``worker`` (the project's Worker: :func:`stepstone.runtime.worker_app`, or ``stepstone dev``'s proxy to
    its worker child), every request no route of the API matches goes to it, as on Cloudflare where the Worker
    owns the hostname: Cloudflare's own paths (``/client/v4/...``, ``/cdn-cgi/...``) keep theirs, and so do
    ``/health``, ``/openapi.json`` and ``/metrics``; the dashboard is then at ``/cdn-cgi/stepstone/`` only.

    Args:
        engine: the engine whose database the API serves; it needs no worker (``Engine(..., worker=False)``).
        tokens: API tokens and their accounts; none means any token is accepted, on loopback only.
        loopback_only: whether the server listens only on loopback addresses.
        metrics_also: ``/metrics`` URLs of other processes merged into ours (``stepstone dev``'s worker).
        limits: the body deadline (the other limits apply in :func:`~stepstone.server.serve`'s uvicorn).
        worker: the ASGI application serving every other path.

    Raises:
        InsecureServerError: no tokens while not ``loopback_only``.
    """
    auth = Authenticator(tokens, loopback_only=loopback_only)
    if importlib.util.find_spec("prometheus_client") is not None:
        engine.enable_metrics()
    dashboard: list[BaseRoute] = mounted_routes(DASHBOARD_PREFIX)
    if worker is None:
        dashboard.extend(dashboard_routes())
    app = Starlette(
        routes=[*_routes(), *dashboard],
        exception_handlers={HTTPException: _http_error, Exception: _unexpected},
    )
    app.router.redirect_slashes = False
    if worker is not None:
        app.router.default = worker
    app.state.dashboard = Sessions(auth)
    app.state.stepstone = ServerState(
        engine=engine,
        auth=auth,
        body_cap=engine.limits.payload_bytes + MARGIN,
        body_timeout=(limits or ConnectionLimits()).body_timeout,
        metrics_also=tuple(metrics_also),
    )
    return app
