"""Bearer tokens scoped to accounts.

Each :class:`TokenRule` names one token (or its SHA-256, so the configuration need not hold the secret) and
the account ids it may use. Tokens are compared as SHA-256 digests with :func:`hmac.compare_digest`, against
every rule, so neither the token nor which rule matched leaks through timing; tokens are never logged.

With no rules the server is *open*: any token (or none) is accepted, but only on loopback, and only from
requests that name a loopback host and come from no foreign web origin (so a web page cannot drive the API
through the browser, by DNS rebinding or a cross-site form). Asked to listen elsewhere with no rules,
:class:`Authenticator` refuses to be built.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from stepstone.errors import ValidationError
from stepstone.server.envelope import AUTH, ApiError

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


@dataclass(frozen=True, slots=True)
class TokenRule:
    """One API token and the accounts it may use.

    Attributes:
        token: the token itself (give this or ``token_sha256``).
        token_sha256: the hex SHA-256 of the token, so the secret need not be stored.
        accounts: account ids the token may use; ``"*"`` (the default) means every account.
    """

    token: str | None = None
    token_sha256: str | None = None
    accounts: tuple[str, ...] = ("*",)


class InsecureServerError(ValidationError):
    """The server was asked to listen beyond loopback with no API tokens configured."""


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, ``127.0.0.0/8`` and ``::1`` (with or without brackets)."""
    name = host.strip().lower().strip("[]")
    if name in _LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_of(value: str) -> str:
    """The host part of a ``Host`` header (``name:port``, ``[v6]:port``)."""
    return urlsplit(f"//{value}").hostname or ""


def _digest(rule: TokenRule, index: int) -> bytes:
    if (rule.token is None) == (rule.token_sha256 is None):
        raise ValidationError(f"API token rule #{index + 1}: give exactly one of token or token_sha256")
    if rule.token is not None:
        if not rule.token.strip():
            raise ValidationError(f"API token rule #{index + 1}: the token is empty")
        return hashlib.sha256(rule.token.encode()).digest()
    assert rule.token_sha256 is not None
    if not _HEX64.fullmatch(rule.token_sha256):
        raise ValidationError(f"API token rule #{index + 1}: token_sha256 must be 64 hexadecimal characters")
    return bytes.fromhex(rule.token_sha256)


class Authenticator:
    """Decides whether a request may use an account.

    Args:
        tokens: the token rules; none means open (loopback only).
        loopback_only: whether the server listens only on loopback.

    Raises:
        InsecureServerError: no tokens and ``loopback_only`` is false.
        ValidationError: a malformed rule.
    """

    def __init__(self, tokens: Sequence[TokenRule] | None, *, loopback_only: bool) -> None:
        rules = list(tokens or ())
        if not rules and not loopback_only:
            raise InsecureServerError(
                "refusing to serve the API beyond loopback with no API tokens configured: "
                "configure at least one token (see docs/rest.md), or listen on 127.0.0.1"
            )
        self._rules: list[tuple[bytes, frozenset[str]]] = []
        for i, rule in enumerate(rules):
            accounts = frozenset(rule.accounts)
            if not accounts or not all(isinstance(a, str) and a for a in accounts):
                raise ValidationError(f"API token rule #{i + 1}: accounts must be non-empty account ids or '*'")
            self._rules.append((_digest(rule, i), accounts))
        self.open = not rules

    def _accounts_for(self, authorization: str | None) -> frozenset[str]:
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, AUTH, "missing API token: send the header 'Authorization: Bearer <token>'")
        presented = hashlib.sha256(token.encode()).digest()
        matched: frozenset[str] | None = None
        for digest, accounts in self._rules:
            if hmac.compare_digest(presented, digest) and matched is None:
                matched = accounts
        if matched is None:
            raise ApiError(401, AUTH, "invalid API token: it matches no token configured on this server")
        return matched

    def _check_open(self, *, host: str | None, origin: str | None, client: str | None) -> None:
        if client is not None and not is_loopback_host(client):
            raise ApiError(403, AUTH, "this server has no API tokens, so it only answers loopback clients")
        if host is not None and not is_loopback_host(_host_of(host)):
            raise ApiError(
                403, AUTH, "this server has no API tokens, so it only answers requests addressed to a loopback host"
            )
        if origin and origin != "null" and not is_loopback_host(urlsplit(origin).hostname or ""):
            raise ApiError(403, AUTH, "cross-origin requests are refused")
        if origin == "null":
            raise ApiError(403, AUTH, "cross-origin requests are refused")

    def authorize(
        self,
        *,
        account: str | None,
        authorization: str | None,
        host: str | None,
        origin: str | None,
        client: str | None,
        any_account: bool = False,
    ) -> frozenset[str]:
        """Check a request; returns the accounts its token may use (``{"*"}`` when open).

        Args:
            account: the account the request addresses; None for account-less routes, which need a token
                allowed every account (``"*"``).
            authorization: the ``Authorization`` header.
            host: the ``Host`` header.
            origin: the ``Origin`` header.
            client: the peer's address.
            any_account: any known token will do (listing the accounts a token may use).

        Raises:
            ApiError: 401 without a known token, 403 for a token of another account.
        """
        if self.open:
            self._check_open(host=host, origin=origin, client=client)
            return frozenset({"*"})
        accounts = self._accounts_for(authorization)
        if any_account or "*" in accounts or (account is not None and account in accounts):
            return accounts
        if account is None:
            raise ApiError(403, AUTH, "this route needs an API token allowed every account ('*')")
        raise ApiError(403, AUTH, f"this API token may not use account {account!r}")
