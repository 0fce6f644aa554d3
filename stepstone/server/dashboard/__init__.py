"""The web dashboard under ``/`` of ``stepstone dev`` and ``stepstone serve``.

Server-rendered pages (Starlette and Jinja2) with a small vendored htmx (``static/VENDORED.md``), no JavaScript
build and nothing fetched at run time. It owns the pages, their forms and the browser's session; it reads and
acts only through the client API (the ``Workflow`` binding and ``WorkflowInstance`` handles, as the REST API
does) and adds no SQL and no model of its own. See ``docs/dashboard.md``.

Routes (the account is in the path, as in the REST API)::

    GET  /                                            the only account's workflows, or a list of accounts
    GET  /login, POST /login, POST /logout            the token form (only with API tokens configured)
    GET  /accounts/{account}/workflows                workflows
    GET  /accounts/{account}/workflows/{name}         its instances; POST: trigger, bulk actions
    GET  /accounts/{account}/workflows/{name}/instances/{id}     one instance; POST: its actions
    GET  /dashboard/static/...                        CSS, the dashboard's script, htmx
"""

from __future__ import annotations

from pathlib import Path

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from stepstone.server.dashboard import actions, pages
from stepstone.server.dashboard.session import Sessions

STATIC = Path(__file__).parent / "static"
ACCOUNT = "/accounts/{account_id}"
WORKFLOW = ACCOUNT + "/workflows/{workflow_name}"


def mounted_routes(prefix: str) -> list[BaseRoute]:
    """The dashboard under ``prefix`` (every link and redirect then starts with it), ``prefix`` itself redirecting
    to ``prefix/``."""
    return [Route(prefix, pages.to_mount_root, methods=["GET"]), Mount(prefix, routes=dashboard_routes())]


def dashboard_routes() -> list[BaseRoute]:
    """The dashboard's routes, to mount beside the REST API's."""
    return [
        Route("/", pages.root_page, methods=["GET"]),
        Route("/login", actions.login_page, methods=["GET", "POST"]),
        Route("/logout", actions.logout, methods=["POST"]),
        Route(ACCOUNT, pages.home_page, methods=["GET"]),
        Route(ACCOUNT + "/workflows", pages.workflows_page, methods=["GET"]),
        Route(WORKFLOW, pages.instances_page, methods=["GET"]),
        Route(WORKFLOW, actions.instances_post, methods=["POST"]),
        Route(WORKFLOW + "/instances/{instance_id:path}", pages.instance_page, methods=["GET"]),
        Route(WORKFLOW + "/instances/{instance_id:path}", actions.instance_post, methods=["POST"]),
        Mount("/dashboard/static", app=StaticFiles(directory=STATIC), name="dashboard-static"),
    ]


__all__ = ["Sessions", "dashboard_routes"]
