"""The dashboard's pages and forms in process (httpx over ASGI, a real SQLite file and worker): what each page
shows, bad input answered as a 400 page naming the field, CSRF, login, and keyset paging."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from html import unescape

import httpx
import pytest

from stepstone import Engine
from stepstone.server import TokenRule, create_app
from tests.server_process import WORKFLOWS

UI = "/accounts/local/workflows"


async def _client(db_url: str, tokens: list[TokenRule] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    engine = Engine(db_url, poll_interval=0.05)
    for name, cls in WORKFLOWS.items():
        engine.register(cls, name=name, script_name="tests")
    async with engine:
        app = create_app(engine, tokens=tokens, loopback_only=True)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8787") as client:
            yield client


@pytest.fixture
async def ui(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async for client in _client(db_url):
        yield client


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


async def wait_for(ui: httpx.AsyncClient, path: str, text: str) -> str:
    for _ in range(400):
        html = unescape((await ui.get(path)).text)
        if text in html:
            return html
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared on {path}")


async def test_root_leads_to_the_workflows_page(ui: httpx.AsyncClient) -> None:
    root = await ui.get("/")
    assert root.status_code == 303 and root.headers["location"] == UI
    page = await ui.get(UI)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in WORKFLOWS:
        assert f'href="{UI}/{name}"' in page.text
    assert (await ui.get("/dashboard/static/htmx-2.0.11.min.js")).status_code == 200


async def test_trigger_then_the_instance_page(ui: httpx.AsyncClient) -> None:
    page = await ui.get(f"{UI}/sleeper")
    form = {"csrf": csrf_of(page.text), "action": "trigger", "id": "nap-1", "params": '{"x": 1}'}
    made = await ui.post(f"{UI}/sleeper", data=form)
    assert made.status_code == 303 and made.headers["location"].startswith(f"{UI}/sleeper/instances/nap-1")
    html = await wait_for(ui, f"{UI}/sleeper/instances/nap-1", "sleeping in step 'nap-1' until ")
    assert "before-1" in html and '"x": 1' in html and " UTC" in html
    live = await ui.get(f"{UI}/sleeper/instances/nap-1?fragment=live")
    assert live.text.startswith('<section id="live"')
    seen = re.search(r"seen=([0-9a-f]+)", live.text)
    assert seen is not None
    unchanged = await ui.get(f"{UI}/sleeper/instances/nap-1?fragment=live&seen={seen.group(1)}")
    assert unchanged.status_code == 204  # a poll that finds nothing new swaps nothing
    bad = await ui.post(f"{UI}/sleeper", data={**form, "id": "nap-2", "params": "{oops"})
    assert bad.status_code == 400 and "params is not valid JSON" in bad.text


async def test_the_workflow_page_shows_its_version_and_diagram(ui: httpx.AsyncClient) -> None:
    html = unescape((await ui.get(f"{UI}/sleeper")).text)
    assert '<details class="diagram" id="diagram">' in html and "Sleeper.run:" in html
    assert re.search(r"Version [0-9a-f-]{36}: diagram", html) and "sleep 'nap'" in html


async def test_bad_filters_are_400_pages_naming_the_field(ui: httpx.AsyncClient) -> None:
    for query, field in (("status=nope", "status"), ("since=yesterday", "since"), ("cursor=x:y", "cursor")):
        answer = await ui.get(f"{UI}/quick?{query}")
        assert answer.status_code == 400, query
        assert field in answer.text and "<html" in answer.text
    assert (await ui.get(f"{UI}/nope")).status_code == 404
    assert (await ui.get(f"{UI}/quick/instances/missing")).status_code == 404


async def test_forms_without_the_csrf_token_are_refused(ui: httpx.AsyncClient) -> None:
    refused = await ui.post(f"{UI}/quick", data={"action": "trigger"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    page = await ui.get(f"{UI}/quick")
    cross = await ui.post(
        f"{UI}/quick", data={"action": "trigger", "csrf": csrf_of(page.text)}, headers={"origin": "https://evil.test"}
    )
    assert cross.status_code == 403


async def test_keyset_pages_walk_every_instance_once(ui: httpx.AsyncClient) -> None:
    engine_page = await ui.get(f"{UI}/quick")
    csrf = csrf_of(engine_page.text)
    wanted = {f"q-{i:03d}" for i in range(120)}
    for instance_id in sorted(wanted):
        made = await ui.post(f"{UI}/quick", data={"csrf": csrf, "action": "trigger", "id": instance_id})
        assert made.status_code == 303
    seen: list[str] = []
    path = f"{UI}/quick"
    while path:
        html = (await ui.get(path)).text
        seen += re.findall(r'name="sel" value="([^"]+)"', html)
        older = re.search(r'href="([^"]+cursor=[^"]+)" rel="next"', html)
        path = older.group(1).replace("&amp;", "&") if older else ""
    assert sorted(seen) == sorted(wanted) and len(seen) == len(wanted)


async def test_bulk_terminate_of_a_selection(ui: httpx.AsyncClient) -> None:
    page = await ui.get(f"{UI}/waiter")
    csrf = csrf_of(page.text)
    for i in range(3):
        await ui.post(f"{UI}/waiter", data={"csrf": csrf, "action": "trigger", "id": f"b-{i}"})
    await wait_for(ui, f"{UI}/waiter?status=waiting", "b-2")
    done = await ui.post(
        f"{UI}/waiter?status=waiting",
        data={"csrf": csrf, "action": "terminate", "scope": "selection", "sel": ["b-0", "b-1"]},
    )
    assert done.status_code == 303 and "terminate%3A+2+of+2" in done.headers["location"]
    html = (await ui.get(f"{UI}/waiter?status=terminated")).text
    assert "b-0" in html and "b-1" in html and "b-2" not in html


async def test_login_with_a_token_and_refused_without(db_url: str) -> None:
    async for ui in _client(db_url, [TokenRule(token="sekrit", accounts=("acme",))]):
        first = await ui.get("/accounts/acme/workflows")
        assert first.status_code == 303 and first.headers["location"].startswith("/login?")
        form = await ui.get("/login")
        assert form.status_code == 200 and 'type="password"' in form.text
        wrong = await ui.post("/login", data={"token": "nope", "next": "/"})
        assert wrong.status_code == 401 and "invalid API token" in wrong.text
        good = await ui.post("/login", data={"token": "sekrit", "next": "//evil.test/"})
        assert good.status_code == 303 and good.headers["location"] == "/"
        cookie = good.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        root = await ui.get("/")
        assert root.headers["location"] == "/accounts/acme/workflows"
        assert (await ui.get("/accounts/acme/workflows")).status_code == 200
        other = await ui.get("/accounts/other/workflows")
        assert other.status_code == 403 and "may not use account" in other.text
