"""Who is looking at the dashboard, and whether a form they post is theirs.

With API tokens configured, the browser presents a token once, on the login form; the server keeps it in an
HttpOnly, SameSite=Strict cookie (Secure over HTTPS), so page scripts never see it and no other site's page can
send it. Every request is then checked by the REST API's own :class:`~stepstone.server.auth.Authenticator`, for
the account in the path, exactly as a Bearer token would be. With no tokens the dashboard is loopback-only, like
the API: the authenticator refuses foreign clients, hosts and origins.

Every state-changing request also carries a CSRF token (a hidden form field, or the ``X-CSRF-Token`` header htmx
sends): an HMAC, under a secret made when the server starts, of the cookie (or of nothing when open). A page of
another origin cannot read it, so it cannot forge the request; a restart changes the secret, and a form made
before it asks to be reloaded.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import urlsplit

from starlette.requests import Request

from stepstone.server.auth import Authenticator
from stepstone.server.envelope import AUTH, ApiError

COOKIE = "stepstone_dashboard"
CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"


class Sessions:
    """Authentication and CSRF for the dashboard's requests.

    Args:
        auth: the REST API's authenticator (its token rules and loopback policy).
    """

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self._secret = secrets.token_bytes(32)

    @property
    def open(self) -> bool:
        """No tokens configured: anyone on loopback, no login."""
        return self.auth.open

    def token(self, request: Request) -> str | None:
        """The token the browser logged in with, if any."""
        return request.cookies.get(COOKIE) or None

    def _authorize(self, request: Request, *, account: str | None, token: str | None) -> frozenset[str]:
        return self.auth.authorize(
            account=account,
            any_account=account is None,
            authorization=f"Bearer {token}" if token else None,
            host=request.headers.get("host"),
            origin=request.headers.get("origin"),
            client=request.client.host if request.client else None,
        )

    def accounts(self, request: Request, account: str | None = None) -> frozenset[str]:
        """The accounts this browser may see (``{"*"}`` for all); checks ``account`` when given.

        Raises:
            ApiError: 401 when not logged in (or the token is no longer configured), 403 when refused.
        """
        return self._authorize(request, account=account, token=self.token(request))

    def check_token(self, request: Request, token: str) -> frozenset[str]:
        """The accounts of a token typed into the login form (401 when it matches no rule)."""
        if not token.strip():
            raise ApiError(401, AUTH, "enter an API token")
        return self._authorize(request, account=None, token=token.strip())

    def csrf(self, request: Request) -> str:
        """The CSRF token that this browser's forms carry."""
        bound = hashlib.sha256((self.token(request) or "").encode()).digest()
        return hmac.new(self._secret, bound, hashlib.sha256).hexdigest()

    def check_csrf(self, request: Request, form: dict[str, str]) -> None:
        """Refuse a state-changing request without this browser's CSRF token, or from another origin.

        Raises:
            ApiError: 403.
        """
        origin = request.headers.get("origin")
        if origin and origin != "null":
            here = urlsplit(str(request.url))
            there = urlsplit(origin)
            if (there.scheme, there.netloc) != (here.scheme, request.headers.get("host", here.netloc)):
                raise ApiError(403, AUTH, "cross-origin form posts are refused")
        elif origin == "null":
            raise ApiError(403, AUTH, "cross-origin form posts are refused")
        given = request.headers.get(CSRF_HEADER) or form.get(CSRF_FIELD) or ""
        if not hmac.compare_digest(given.encode(), self.csrf(request).encode()):
            raise ApiError(
                403, AUTH, "the form's CSRF token is missing or stale (the server restarted?): reload the page"
            )
