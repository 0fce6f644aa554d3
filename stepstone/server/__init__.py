"""The REST API and the dashboard: Cloudflare's v4 Workflows API, the local explorer API and the web pages, over
an :class:`~stepstone.Engine`.

Needs the ``server`` extra (``pip install 'stepstone[server]'``: Starlette, uvicorn and Jinja2)::

    async with Engine("sqlite:///app.db", worker=False) as engine:
        await serve(engine, host="0.0.0.0", tokens=[TokenRule(token_sha256="...", accounts=("acme",))])

The official ``cloudflare`` SDK and ``wrangler`` work against it unchanged; see ``docs/rest.md``.
"""

from __future__ import annotations

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the stepstone REST API and dashboard need Starlette, uvicorn and Jinja2: pip install 'stepstone[server]'"
    ) from exc

from stepstone.server.app import create_app
from stepstone.server.auth import InsecureServerError, TokenRule
from stepstone.server.connections import ConnectionLimits
from stepstone.server.run import serve, serve_app
from stepstone.server.worker_proxy import WorkerProxy

__all__ = ["ConnectionLimits", "InsecureServerError", "TokenRule", "WorkerProxy", "create_app", "serve", "serve_app"]
