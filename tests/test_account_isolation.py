"""Accounts partition the data, route by route, over real HTTP, on SQLite and PostgreSQL.

Account ``acme`` (A) deploys two workflows and starts two instances carrying a secret. Then a token allowed
only ``beta`` (B) sends every operation of the OpenAPI document (each path and method, path parameters filled
with A's workflow names, instance id and version id, a valid body and query), once with A's account in the path
and once with its own, and every dashboard route that takes an account, the same way. A's account in the path
is refused (403), the explorer API (no account in its paths) is refused (it needs ``*``), and B's own account
finds none of A's things (404) and lists none of them: no answer contains A's secret, A's version ids or, in a
list, A's instance ids. Afterwards A's workflows, instances, steps and pending event wait are exactly as before,
and a ``*`` token still sees them. Nothing here is a hand-picked path: the sweep is the OpenAPI document's paths
and the app's dashboard routes, and a test pins that together they are every route the app serves.
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.routing import Mount, Route

from stepstone import Engine
from stepstone.server import create_app
from stepstone.server.app import DASHBOARD_PREFIX
from stepstone.server.dashboard import dashboard_routes
from stepstone.server.openapi import openapi_document
from tests.server_process import running_server
from tests.test_unstorable_text import VALID_BODY, VALID_QUERY

A, B = "acme", "beta"
A_TOKEN, B_TOKEN, ADMIN = "acme-token-1f2e3d", "beta-token-9a8b7c", "admin-token-000111"
TOKENS = [
    {"token": A_TOKEN, "accounts": [A]},
    {"token": B_TOKEN, "accounts": [B]},
    {"token": ADMIN, "accounts": ["*"]},
]
SECRET = "A-SECRET-5e1d9c"
V4 = "/client/v4/accounts/{account}/workflows"
DEPLOY = {"waiter": "Waiter", "quick": "Quick"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    database = None if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    with running_server(tmp_path, tokens=TOKENS, database=database) as base:
        yield base


def _client(base: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"}, timeout=30)


def _result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["result"]


def _wait_for(http: httpx.Client, url: str, status: str) -> dict[str, Any]:
    for _ in range(400):
        doc: dict[str, Any] = _result(http.get(url))
        if doc["status"] == status:
            return doc
        time.sleep(0.05)
    raise AssertionError(f"{url} never reached {status}: {doc}")


def _deploy(http: httpx.Client, account: str) -> dict[str, str]:
    """The account's own copies of the server's workflows; their version ids."""
    versions = {}
    for name, cls in DEPLOY.items():
        doc = _result(http.put(f"{V4.format(account=account)}/{name}", json={"class_name": cls, "script_name": "t"}))
        versions[name] = doc["version_id"]
    return versions


def _a_view(http: httpx.Client) -> dict[str, Any]:
    """Everything A can see of its own data (minus times that move on their own)."""
    base = V4.format(account=A)
    workflows = _result(http.get(base))
    view: dict[str, Any] = {"workflows": sorted((w["name"], w["instances"]) for w in workflows)}
    for name, instance_id in (("waiter", "a-wait"), ("quick", "a-done")):
        doc = _result(http.get(f"{base}/{name}/instances/{instance_id}"))
        view[instance_id] = {
            "status": doc["status"],
            "params": doc["params"],
            "output": doc["output"],
            "steps": [(s.get("name"), s.get("type"), s.get("success")) for s in doc["steps"]],
        }
        view[f"{name} ids"] = sorted(i["id"] for i in _result(http.get(f"{base}/{name}/instances")))
        view[f"{name} version"] = _result(http.get(f"{base}/{name}/versions"))[0]["id"]
    return view


# -- what B sends -------------------------------------------------------------------------------------------
def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    """Every operation of the OpenAPI document; deletions last, so the others meet B's workflows still there."""
    ops = [(m.upper(), path, op) for path, item in openapi_document()["paths"].items() for m, op in item.items()]
    return sorted(ops, key=lambda o: (o[0] == "DELETE" or o[1].endswith("/batch/delete"), ops.index(o)))


def _body(method: str, template: str) -> Any:
    tail = template.split("/workflows", 1)[-1]
    prefix = "explorer" if "/explorer/" in template else ""
    body = VALID_BODY.get((method, f"{prefix}/workflows{tail}"), VALID_BODY.get((method, f"/workflows{tail}")))
    body = copy.deepcopy(body)
    if method == "PATCH":  # a lifecycle change that would show on A's instance if it landed
        body = {"action" if prefix else "status": "terminate"}
    if isinstance(body, dict) and "instances" in body:
        body["instances"] = ["a-wait", "a-done"]
    return body


def _fill(template: str, account: str, versions: dict[str, str]) -> str:
    names = {
        "account_id": account,
        "workflow_name": "waiter",
        "instance_id": "a-wait",
        "event_type": "approval",
        "version_id": versions["waiter"],
    }
    return re.sub(r"{(\w+)}", lambda m: names[m.group(1)], template)


def _query(op: dict[str, Any]) -> dict[str, str]:
    query = {p["name"]: VALID_QUERY[p["name"]] for p in op.get("parameters", []) if p.get("in") == "query"}
    if "name" in query:
        query["name"] = "prepare-1"  # a step A's instance has
    query.pop("status", None)  # unfiltered lists: the widest view
    query.pop("cursor", None)
    return query


def _leaks(text: str, versions: dict[str, str], *, sent: str) -> list[str]:
    """A's values in an answer; those B sent itself (an id in the path, echoed in a 404) do not count."""
    forbidden = [SECRET, *versions.values(), "a-wait", "a-done"]
    return [f for f in forbidden if f in text and f not in sent]


def _sweep_api(base: str, versions: dict[str, str]) -> int:
    sent = 0
    with _client(base, B_TOKEN) as b:
        for method, template, op in _operations():
            if "{" not in template:
                continue  # /health, /metrics, memberships: no account, covered below
            aliases = ["", "/"] if method == "GET" and template.endswith(("/workflows", "/instances")) else [""]
            for account, alias in ((account, alias) for account in (A, B) for alias in aliases):
                url = _fill(template, account, versions) + alias
                response = b.request(method, url, params=_query(op), json=_body(method, template))
                sent += 1
                what = f"{method} {url} with B's token"
                assert response.status_code < 500, f"{what}: {response.text}"
                if "/explorer/" in template or account == A:
                    assert response.status_code == 403, f"{what}: {response.text}"
                    assert response.json()["errors"][0]["code"] == 10000
                else:
                    assert response.status_code not in (401, 403), f"{what}: {response.text}"
                    leaked = _leaks(response.text, versions, sent=url + json.dumps(_body(method, template)))
                    assert not leaked, f"{what} answered {response.status_code} with A's {leaked}: {response.text}"
                    if "{instance_id}" in template:  # A's instance id under B's account: never found
                        assert response.status_code == 404, f"{what}: {response.text}"
    return sent


def _dashboard_routes() -> list[Route]:
    return [r for r in dashboard_routes() if isinstance(r, Route) and "{account_id}" in r.path]


def _sweep_dashboard(base: str, versions: dict[str, str]) -> int:
    sent = 0
    with httpx.Client(base_url=base, cookies={"stepstone_dashboard": B_TOKEN}, timeout=30) as b:
        page = b.get(f"/accounts/{B}/workflows")
        assert page.status_code == 200 and not _leaks(page.text, versions, sent="")
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text)
        assert found, "no CSRF token on B's page"
        csrf = found.group(1)
        for route in _dashboard_routes():
            template = route.path.replace(":path}", "}")
            for method in sorted(route.methods or ()):
                if method == "HEAD":
                    continue
                for account in (A, B):
                    url = _fill(template, account, versions)
                    form = {"csrf": csrf, "action": "terminate", "scope": "filter", "sel": ["a-wait"]}
                    response = b.request(method, url, data=form if method == "POST" else None)
                    sent += 1
                    what = f"dashboard {method} {url} as B"
                    assert response.status_code < 500, f"{what}: {response.text[:500]}"
                    if account == A:
                        assert response.status_code == 403, f"{what}: {response.status_code}"
                        continue
                    leaked = _leaks(response.text, versions, sent=url + str(form if method == "POST" else ""))
                    assert not leaked, f"{what} shows A's {leaked}"
                    if "{instance_id}" in template:
                        assert response.status_code == 404, f"{what}: {response.status_code}"
    return sent


def test_a_token_of_one_account_reaches_nothing_of_another(server: str) -> None:
    with _client(server, A_TOKEN) as a, _client(server, B_TOKEN) as b, _client(server, ADMIN) as admin:
        versions = _deploy(a, A)
        for name, instance_id in (("waiter", "a-wait"), ("quick", "a-done")):
            created = {"instance_id": instance_id, "params": {"secret": SECRET}}
            _result(a.post(f"{V4.format(account=A)}/{name}/instances", json=created))
        _wait_for(a, f"{V4.format(account=A)}/waiter/instances/a-wait", "waiting")
        _wait_for(a, f"{V4.format(account=A)}/quick/instances/a-done", "complete")
        before = _a_view(a)
        assert before["a-wait"]["params"] == {"secret": SECRET}

        b_versions = _deploy(b, B)  # B has workflows of the same names: its own, with its own versions
        assert not set(b_versions.values()) & set(versions.values())
        counted = _result(b.get(f"{V4.format(account=B)}/waiter"))["instances"]
        assert set(counted.values()) == {0}  # none of A's counted
        sent = _sweep_api(server, versions) + _sweep_dashboard(server, versions)
        assert sent > 70

        # B's account-less views: memberships lists only its account; /health tells it only liveness
        members = _result(b.get("/client/v4/memberships"))
        assert [m["id"] for m in members] == [B]
        assert _result(b.get("/health")) == {"status": "ok"}
        assert b.get("/metrics").status_code == 403

        time.sleep(0.3)  # any background job B started (terminate by status, bulk actions) has run
        after = _a_view(a)
        assert after == before
        assert after["a-wait"]["status"] == "waiting"  # B's terminate, pause and events never reached it

        # '*' sees A's data through A's account; the explorer API is the default account, not A's
        doc = _result(admin.get(f"{V4.format(account=A)}/waiter/instances/a-wait"))
        assert doc["params"] == {"secret": SECRET}
        explorer = admin.get("/cdn-cgi/local/explorer/api/workflows/waiter/instances")
        assert explorer.status_code == 200 and "a-wait" not in explorer.text
        # and A itself can finish its instance: the event reaches it
        _result(a.post(f"{V4.format(account=A)}/waiter/instances/a-wait/events/approval", json={"ok": True}))
        done = _wait_for(a, f"{V4.format(account=A)}/waiter/instances/a-wait", "complete")
        assert done["output"]["approval"] == {"ok": True}


async def test_the_sweep_covers_every_route_the_app_serves(db_url: str) -> None:
    """The OpenAPI document and the dashboard routes are all the routes: a new route joins the sweep, or fails here."""
    async with Engine(db_url, worker=False) as engine:
        app = create_app(engine, loopback_only=True)
    documented = {(m.upper(), p) for p, item in openapi_document()["paths"].items() for m in item}
    dashboard = {(m, r.path) for r in dashboard_routes() if isinstance(r, Route) for m in r.methods or ()}
    roots = {(r.path, r.endpoint) for r in dashboard_routes() if isinstance(r, Route)}
    for route in app.routes:
        if isinstance(route, Mount) and route.path == DASHBOARD_PREFIX:
            # The dashboard again under Cloudflare's /cdn-cgi/ (its place beside a Worker): the very handlers the
            # sweep covers at the root, so the same account checks.
            mounted = {(r.path, r.endpoint) for r in route.routes if isinstance(r, Route)}
            assert mounted == roots
            continue
        if isinstance(route, Mount):
            assert route.path.endswith("/dashboard/static")  # files, nothing of an account
            continue
        if isinstance(route, Route) and route.path == DASHBOARD_PREFIX:
            continue  # a redirect to the mount's root: no data
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method == "HEAD":
                continue
            key = (method, route.path)
            if key == ("GET", "/openapi.json"):
                continue  # the schema itself: the same document for everyone, no data
            alias = (method, route.path.rstrip("/")) if route.path.endswith("/") else None  # swept with its twin
            assert key in documented or key in dashboard or alias in documented, f"{key} is not swept"
    account_less = {p for _, p in dashboard if "{account_id}" not in p}
    assert account_less == {"/", "/login", "/logout"}  # take no account: they show or act on none
