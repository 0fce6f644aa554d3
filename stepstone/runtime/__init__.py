"""The Worker around the workflows: a project's ``Default`` entrypoint and its ``fetch``, ``scheduled`` and
``queue`` handlers, run as Cloudflare's Workers runtime runs them.

- :mod:`~stepstone.runtime.handlers`: finding the entrypoint and calling a handler on a new instance;
- :mod:`~stepstone.runtime.http`: ``fetch`` served as an ASGI application (``stepstone dev``'s worker child,
  ``stepstone serve``, ``stepstone worker --fetch-port``);
- :mod:`~stepstone.runtime.scheduled`: ``[triggers] crons`` firing ``scheduled`` once per minute across processes;
- :mod:`~stepstone.runtime.source`: what ``main`` declares, read without importing it.

The user-facing module (``from workers import ...``) is :mod:`stepstone.workers`, below this layer; the queue
consumers that call :meth:`WorkerRuntime.queue` are :mod:`stepstone.bindings`'. See ``docs/workers.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stepstone.runtime.handlers import HandlerError, WorkerRuntime, relaxed_call
from stepstone.runtime.http import MAX_BODY_BYTES, worker_app
from stepstone.runtime.scheduled import ScheduledController, fire_crons, run_crons
from stepstone.runtime.source import declares_worker

if TYPE_CHECKING:
    from stepstone.engine import Engine
    from stepstone.project import Project


def load_runtime(project: Project, engine: Engine) -> WorkerRuntime:
    """The Worker of ``project`` over ``engine.env`` (imports ``main`` if the engine did not already), with
    ``ctx.exports.<ClassName>`` for each workflow declared in ``exports``."""
    exports = {wf.class_name: engine.workflow(wf.name) for wf in project.config.workflows if wf.exported}
    return WorkerRuntime(project.module(), engine.env, exports)


__all__ = [
    "MAX_BODY_BYTES",
    "HandlerError",
    "ScheduledController",
    "WorkerRuntime",
    "declares_worker",
    "fire_crons",
    "load_runtime",
    "relaxed_call",
    "run_crons",
    "worker_app",
]
