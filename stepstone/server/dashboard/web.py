"""What every dashboard page shares: the templates, the checks before a handler runs, forms and redirects."""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from stepstone.server.body import read_body
from stepstone.server.dashboard.session import CSRF_FIELD, Sessions
from stepstone.server.dashboard.timeline import show_duration, show_time
from stepstone.server.envelope import ApiError, api_error_for, log_failure
from stepstone.server.state import Scope, ServerState, state_of

log = logging.getLogger("stepstone.dashboard")

FORM_CAP = 2 * 1024 * 1024


def q(value: object) -> str:
    """A path segment or query value, percent-encoded (ids may hold ``/``, ``*``, ``#`` and spaces)."""
    return quote(str(value), safe="")


def pretty(value: object) -> str:
    """A JSON value indented for a ``<pre>``."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=str)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("stepstone.server.dashboard", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(q=q, pretty=pretty, when=show_time, took=show_duration)
    return env


TEMPLATES = _environment()


def root_of(request: Request) -> str:
    """Where the dashboard is mounted: '' at the server's root, ``/cdn-cgi/stepstone`` beside a Worker (which owns
    the other paths), plus any ``root_path`` the server runs under. Every link and redirect starts with it."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def sessions_of(request: Request) -> Sessions:
    """The dashboard's sessions, kept beside the server state."""
    sessions: Sessions = request.app.state.dashboard
    return sessions


@dataclass(slots=True)
class View:
    """One request to a dashboard page, past authentication."""

    request: Request
    state: ServerState
    sessions: Sessions
    account: str
    accounts: frozenset[str]

    @property
    def scope(self) -> Scope:
        """What this page may reach: the account in its path, nothing of any other."""
        return self.state.scope(self.account)

    @property
    def root(self) -> str:
        """The dashboard's mount point (:func:`root_of`)."""
        return root_of(self.request)

    @property
    def base(self) -> str:
        """The account's workflows page, the prefix of every page under it."""
        return f"{self.root}/accounts/{q(self.account)}/workflows"

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        """A template rendered with what every page needs (account, CSRF token, notices)."""
        html = TEMPLATES.get_template(template).render(
            account=self.account,
            base=self.base,
            root=self.root,
            csrf=self.sessions.csrf(self.request),
            logged_in=not self.sessions.open,
            notice=self.request.query_params.get("notice", "")[:500],
            error=self.request.query_params.get("error", "")[:500],
            path=self.request.url.path,
            **context,
        )
        return HTMLResponse(html, status_code=status)

    async def form(self) -> dict[str, list[str]]:
        """The posted form (``application/x-www-form-urlencoded``), CSRF-checked."""
        raw = await read_body(self.request, FORM_CAP, self.state.body_timeout)
        try:
            pairs = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=10_000)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApiError(400, 10001, f"the form could not be read: {exc}") from None
        fields: dict[str, list[str]] = {}
        for key, value in pairs:
            fields.setdefault(key, []).append(value)
        self.sessions.check_csrf(self.request, {k: v[0] for k, v in fields.items() if k == CSRF_FIELD})
        return fields


def back(url: str, **message: str) -> RedirectResponse:
    """A 303 to ``url`` with a ``notice`` or ``error`` for the page to show."""
    extra = urlencode({k: v[:500] for k, v in message.items() if v})
    sep = "&" if "?" in url else "?"
    return RedirectResponse(url + (sep + extra if extra else ""), status_code=303)


def error_page(request: Request, status: int, message: str) -> Response:
    """A plain HTML error page (htmx fragment requests get the text alone)."""
    if request.headers.get("hx-request"):
        return HTMLResponse(f'<p class="flash error" role="alert">{_escape(message)}</p>', status_code=status)
    html = TEMPLATES.get_template("error.html").render(
        status=status, message=message, account=None, path="", root=root_of(request)
    )
    return HTMLResponse(html, status_code=status)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


Handler = Callable[[View], Awaitable[Response]]


def dashboard_page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Authenticate for the account in the path, run the handler, and answer failures as HTML.

    Not logged in (tokens configured) goes to the login form, which comes back here afterwards.
    """

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        sessions = sessions_of(request)
        account = request.path_params.get("account_id", "")
        try:
            accounts = sessions.accounts(request, account)
            view = View(request, state_of(request), sessions, account, accounts)
            return await handler(view)
        except Exception as exc:
            error = api_error_for(exc)
            if error.status == 401 and not sessions.open:  # not logged in yet: the login form, nothing to log
                target = root_of(request) + "/login?" + urlencode({"next": request.url.path, "why": error.message})
                if request.headers.get("hx-request"):
                    return Response(status_code=204, headers={"HX-Redirect": target})
                return RedirectResponse(target, status_code=303)
            log_failure(log, request, exc, error)
            return error_page(request, error.status, error.message)

    return endpoint
