"""Bearer tokens scoped to accounts, the open loopback mode, and refusing to serve beyond loopback without
tokens; with the official SDK against a real server process for the exception classes."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cloudflare import AuthenticationError, Cloudflare, PermissionDeniedError

from stepstone import Engine
from stepstone.errors import ValidationError
from stepstone.server import InsecureServerError, TokenRule, create_app, serve
from stepstone.server.auth import Authenticator, is_loopback_host
from stepstone.server.envelope import ApiError
from tests.server_process import running_server

ADMIN = "admin-token-0123456789"
ACME = "acme-token-abcdef"
BOTH = "both-token-xyz"
TOKENS = [
    {"token": ADMIN, "accounts": ["*"]},
    {"token_sha256": hashlib.sha256(ACME.encode()).hexdigest(), "accounts": ["acme"]},
    {"token": BOTH, "accounts": ["acme", "globex"]},
]


def _auth(rules: list[TokenRule] | None, **request: str | None) -> frozenset[str]:
    auth = Authenticator(rules, loopback_only=True)
    args: dict[str, str | None] = {"authorization": None, "host": "127.0.0.1:8787", "origin": None}
    args |= {"client": "127.0.0.1", "account": "acme"} | request
    return auth.authorize(**args)  # type: ignore[arg-type]


def _status(rules: list[TokenRule] | None, **request: str | None) -> int:
    try:
        _auth(rules, **request)
    except ApiError as exc:
        return exc.status
    return 200


RULES = [
    TokenRule(token=ADMIN),
    TokenRule(token_sha256=hashlib.sha256(ACME.encode()).hexdigest().upper(), accounts=("acme",)),
]


def test_each_rule() -> None:
    assert _status(RULES) == 401  # no token
    assert _status(RULES, authorization="Basic abc") == 401
    assert _status(RULES, authorization="Bearer ") == 401
    assert _status(RULES, authorization="Bearer wrong") == 401
    assert _status(RULES, authorization=f"Bearer {ACME}") == 200  # matched by its hash
    assert _status(RULES, authorization=f"bearer {ACME}") == 200
    assert _status(RULES, authorization=f"Bearer {ACME}", account="globex") == 403
    assert _status(RULES, authorization=f"Bearer {ADMIN}", account="anything") == 200
    # account-less routes (the local explorer) need a token allowed every account
    assert _status(RULES, authorization=f"Bearer {ACME}", account=None) == 403
    assert _status(RULES, authorization=f"Bearer {ADMIN}", account=None) == 200
    # with tokens, the peer and host do not matter
    assert _status(RULES, authorization=f"Bearer {ADMIN}", client="10.1.2.3", host="api.example.com") == 200


def test_open_mode_is_loopback_only() -> None:
    assert _status(None) == 200
    assert _status(None, authorization="Bearer whatever", account=None) == 200
    assert _status(None, client="10.0.0.5") == 403
    assert _status(None, host="evil.example:8787") == 403  # DNS rebinding
    assert _status(None, host="localhost:8787") == 200
    assert _status(None, host="[::1]:8787") == 200
    assert _status(None, origin="https://evil.example") == 403  # a web page posting through the browser
    assert _status(None, origin="null") == 403
    assert _status(None, origin="http://localhost:3000") == 200


def test_bad_rules_and_insecure_configurations_are_refused(db_url: str) -> None:
    with pytest.raises(InsecureServerError, match="beyond loopback"):
        Authenticator(None, loopback_only=False)
    with pytest.raises(InsecureServerError):
        create_app(Engine(db_url, worker=False), tokens=[], loopback_only=False)
    with pytest.raises(ValidationError, match="exactly one"):
        Authenticator([TokenRule()], loopback_only=False)
    with pytest.raises(ValidationError, match="exactly one"):
        Authenticator([TokenRule(token="a", token_sha256="0" * 64)], loopback_only=False)
    with pytest.raises(ValidationError, match="64 hexadecimal"):
        Authenticator([TokenRule(token_sha256="abc")], loopback_only=False)
    with pytest.raises(ValidationError, match="accounts"):
        Authenticator([TokenRule(token="a", accounts=())], loopback_only=False)
    Authenticator([TokenRule(token="a")], loopback_only=False)  # tokens make any address acceptable


def test_loopback_hosts() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "app.localhost"):
        assert is_loopback_host(host)
    for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", ""):
        assert not is_loopback_host(host)


async def test_serve_refuses_a_public_address_without_tokens(db_url: str) -> None:
    async with Engine(db_url, worker=False) as engine:
        with pytest.raises(InsecureServerError, match="no API tokens"):
            await serve(engine, host="0.0.0.0", port=0)


async def test_serve_runs_until_cancelled_and_reports_a_busy_port(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Engine(db_url, worker=False) as engine:
        ready = asyncio.Event()
        task = asyncio.create_task(serve(engine, port=0, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        assert "no API tokens configured" in caplog.text
        line = next(r.getMessage() for r in caplog.records if "REST API on" in r.getMessage())
        port = int(line.split("http://127.0.0.1:")[1].split(":")[0])
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        with pytest.raises(ValidationError, match="cannot listen"):
            await serve(engine, port=port)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("auth")
    with running_server(tmp, tokens=TOKENS) as base:
        yield base, tmp


def _client(base: str, token: str) -> Cloudflare:
    return Cloudflare(api_token=token, base_url=base + "/client/v4", max_retries=0)


def test_sdk_exceptions_per_rule(secured: tuple[str, Path]) -> None:
    base, tmp = secured
    with _client(base, ADMIN) as c:  # the server's workflows live in 'local'; deploy 'quick' in these accounts too
        for account in ("acme", "globex", "initech"):
            c.workflows.update("quick", account_id=account, class_name="Quick", script_name="tests")
    with _client(base, "not-a-token") as c, pytest.raises(AuthenticationError) as unknown:
        c.workflows.list(account_id="acme")
    assert unknown.value.body["errors"][0]["code"] == 10000  # type: ignore[index]
    with _client(base, ACME) as c:
        assert {w.name for w in c.workflows.list(account_id="acme")} >= {"quick"}
        with pytest.raises(PermissionDeniedError) as other:
            c.workflows.get("quick", account_id="globex")
        assert "globex" in other.value.body["errors"][0]["message"]  # type: ignore[index]
    with _client(base, BOTH) as c:
        c.workflows.get("quick", account_id="globex")
        with pytest.raises(PermissionDeniedError):
            c.workflows.get("quick", account_id="initech")
    with _client(base, ADMIN) as c:
        c.workflows.instances.create("quick", account_id="initech", instance_id="by-admin")

    no_token = httpx.get(f"{base}/client/v4/accounts/acme/workflows")
    assert no_token.status_code == 401 and no_token.headers["x-should-retry"] == "false"
    assert no_token.headers["www-authenticate"].startswith("Bearer")
    explorer = f"{base}/cdn-cgi/local/explorer/api/workflows"
    assert httpx.get(explorer).status_code == 401
    assert httpx.get(explorer, headers={"authorization": f"Bearer {ACME}"}).status_code == 403
    assert httpx.get(explorer, headers={"authorization": f"Bearer {ADMIN}"}).status_code == 200
    members = httpx.get(f"{base}/client/v4/memberships", headers={"authorization": f"Bearer {BOTH}"}).json()
    assert [m["account"]["id"] for m in members["result"]] == ["acme", "globex"]
    assert httpx.get(f"{base}/health").status_code == 200  # health and the schema need no token

    log = "".join(p.read_text() for p in tmp.glob("server-*.log"))
    assert "API token(s) configured" in log
    for secret in (ADMIN, ACME, BOTH, "not-a-token"):
        assert secret not in log
