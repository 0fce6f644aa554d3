"""The REST API: Cloudflare's v4 Workflows API and the local explorer API, over an :class:`~stepstone.Engine`.

Needs the ``server`` extra (``pip install 'stepstone[server]'``: Starlette and uvicorn)::

    async with Engine("sqlite:///app.db", worker=False) as engine:
        await serve(engine, host="0.0.0.0", tokens=[TokenRule(token_sha256="...", accounts=("acme",))])

The official ``cloudflare`` SDK and ``wrangler`` work against it unchanged; see ``docs/rest.md``.
"""

from __future__ import annotations

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the stepstone REST API needs Starlette and uvicorn: pip install 'stepstone[server]'") from exc

from stepstone.server.app import create_app
from stepstone.server.auth import InsecureServerError, TokenRule
from stepstone.server.run import serve

__all__ = ["InsecureServerError", "TokenRule", "create_app", "serve"]
