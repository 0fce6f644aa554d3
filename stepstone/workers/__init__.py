"""The ``workers`` module of Cloudflare's Python Workers, provided by stepstone's runtime.

When stepstone loads a project's ``main``, ``import workers`` (and ``workers.workflows``, ``workers.asgi``, and the
SDK's top-level ``asgi``) resolve to this package, as the Workers runtime provides its SDK: nothing named
``workers`` is installed into the environment (another PyPI project owns that name). So a Worker written for
Cloudflare imports unchanged::

    from workers import Response, WorkerEntrypoint, WorkflowEntrypoint
    from workers.workflows import NonRetryableError

    class Default(WorkerEntrypoint):
        async def fetch(self, request):
            instance = await self.env.MY_WORKFLOW.create()
            return Response.json({"id": instance.id})

Where Cloudflare hands Python a JavaScript object (a ``JsProxy``), this module has a plain Python object with the
same attributes and methods: :class:`Request`, :class:`Response`, :class:`Context` (``self.ctx``), headers as
:class:`http.client.HTTPMessage`. ``WorkflowEntrypoint`` and ``NonRetryableError`` are stepstone's own classes.
See ``docs/workers.md``.
"""

from __future__ import annotations

from typing import Any

from stepstone.workers.body import Blob, BodyInit, File, FormData, FormDataValue, HeadersInit
from stepstone.workers.entrypoints import (
    Context,
    DurableObject,
    WorkerEntrypoint,
    WorkflowEntrypoint,
    current_env,
    handler,
    import_from_javascript,
    patch_env,
    python_from_rpc,
    python_to_rpc,
    wait_until,
)
from stepstone.workers.fetch import fetch
from stepstone.workers.request import Request
from stepstone.workers.response import FetchResponse, Response

Body = BodyInit
Headers = HeadersInit
waitUntil = wait_until

__all__ = [
    "Blob",
    "Body",
    "Context",
    "DurableObject",
    "FetchResponse",
    "File",
    "FormData",
    "FormDataValue",
    "Headers",
    "Request",
    "Response",
    "WorkerEntrypoint",
    "WorkflowEntrypoint",
    "env",
    "fetch",
    "handler",
    "import_from_javascript",
    "patch_env",
    "python_from_rpc",
    "python_to_rpc",
    "waitUntil",
    "wait_until",
]


def __getattr__(name: str) -> Any:
    if name == "env":  # ``from workers import env``: the loaded project's bindings, read when imported
        return current_env()
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
