"""The REST API in process (httpx over ASGI, a real SQLite file and worker): envelope, routes, input checks,
paging, bulk operations and the local explorer API."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.routing import Route

from stepstone import Engine
from stepstone.server import create_app
from stepstone.server.openapi import openapi_document
from tests.server_process import WORKFLOWS

V4 = "/client/v4/accounts/local/workflows"
EXPLORERS = ("/cdn-cgi/explorer/api", "/cdn-cgi/local/explorer/api")


@pytest.fixture
async def api(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    engine = Engine(db_url, poll_interval=0.05)
    for name, cls in WORKFLOWS.items():
        engine.register(cls, name=name, script_name="tests")
    async with engine:
        app = create_app(engine, loopback_only=True)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8787") as client:
            yield client


def failure(response: httpx.Response, status: int, code: int | None = None) -> str:
    """Check an error envelope; returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["success"] is False and body["result"] is None and body["messages"] == []
    (error,) = body["errors"]
    if code is not None:
        assert error["code"] == code
    if 400 <= status < 500 and status not in (408, 429):
        assert response.headers["x-should-retry"] == "false"
    assert isinstance(error["message"], str) and error["message"]
    return str(error["message"])


def result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["errors"] == [] and body["messages"] == []
    return body["result"]


async def wait_status(api: httpx.AsyncClient, path: str, wanted: set[str]) -> dict[str, Any]:
    for _ in range(400):
        doc = result(await api.get(path))
        if doc["status"] in wanted:
            return dict(doc)
        await asyncio.sleep(0.025)
    raise AssertionError(f"{path} stayed {doc['status']}")


async def test_health_and_openapi(api: httpx.AsyncClient) -> None:
    assert result(await api.get("/health"))["status"] == "ok"
    doc = (await api.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    assert doc == openapi_document()
    for path in (V4, f"{V4}/{{workflow_name}}/instances/{{instance_id}}/status", "/cdn-cgi/explorer/api/workflows"):
        assert path.replace("local", "{account_id}", 1) in doc["paths"]


def dashboard_routes_of(app: Any) -> list[Any]:
    return [r for r in app.routes if not isinstance(r, Route) or r.endpoint.__module__.startswith(DASHBOARD)]


DASHBOARD = "stepstone.server.dashboard"


def test_every_route_is_documented(db_url: str) -> None:
    app = create_app(Engine(db_url, worker=False), loopback_only=True)
    documented = {(p.rstrip("/"), m.upper()) for p, ops in openapi_document()["paths"].items() for m in ops}
    for route in app.routes:
        if route in dashboard_routes_of(app):
            continue  # the dashboard's HTML pages are not part of the REST API
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD" and route.path != "/openapi.json":
                assert (route.path.rstrip("/"), method) in documented


async def test_unknown_routes_and_methods_get_the_envelope(api: httpx.AsyncClient) -> None:
    assert "openapi.json" in failure(await api.get("/client/v4/nothing"), 404, 7003)
    failure(await api.delete(V4), 405, 10405)
    failure(await api.post("/health"), 405)


async def test_malformed_bodies_are_400_with_a_message(api: httpx.AsyncClient) -> None:
    create = f"{V4}/quick/instances"
    assert "not valid JSON" in failure(await api.post(create, content=b'{"params": '), 400, 10002)
    assert "NaN" in failure(await api.post(create, content=b'{"params": NaN}'), 400)
    assert "UTF-8" in failure(await api.post(create, content=b'{"params": "\xff"}'), 400)
    assert "JSON object" in failure(await api.post(create, json=[1]), 400)
    assert "instance id" in failure(await api.post(create, json={"instance_id": 7}), 400)
    assert "unknown field" in failure(await api.post(create, json={"instanceId": "x"}), 400)
    assert "location_hint" in failure(await api.post(create, json={"location_hint": "mars"}), 400)
    assert "instance_retention" in failure(await api.post(create, json={"instance_retention": 5}), 400)
    assert "nested" in failure(await api.post(create, content=b"[" * 100_000 + b"]" * 100_000), 400)
    failure(await api.post(f"{V4}/quick/instances/batch", json={"instance_id": "x"}), 400)
    failure(await api.post(f"{V4}/quick/instances/batch", json=[{}] * 101), 400)
    failure(await api.patch(f"{V4}/quick/instances/none/status", json={"status": "pause"}), 404, 10400)
    failure(await api.put(f"{V4}/new-wf", json={"class_name": "C"}), 400)
    failure(await api.put(f"{V4}/new-wf", json={"class_name": "C", "script_name": "s", "limits": {"steps": 0}}), 400)
    failure(await api.put(f"{V4}/new-wf", json={"class_name": "C", "script_name": "s", "schedules": "x"}), 400)
    bad_retention = {"class_name": "C", "script_name": "s", "default_retention": {"error_retention": "soon"}}
    failure(await api.put(f"{V4}/new-wf", json=bad_retention), 400)


async def test_bodies_over_the_cap_are_refused_before_reading(api: httpx.AsyncClient) -> None:
    big = b'{"params": "' + b"x" * (1024 * 1024 + 70 * 1024) + b'"}'
    assert "cap" in failure(await api.post(f"{V4}/quick/instances", content=big), 413, 10003)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(200):
            yield b"x" * 8192

    failure(await api.post(f"{V4}/quick/instances", content=chunks()), 413)
    lying = await api.post(f"{V4}/quick/instances", content=b"{}", headers={"content-length": "nope"})
    failure(lying, 400)
    # under the cap but over the payload limit: the engine's limit message
    params = {"params": "x" * (1024 * 1024 + 10)}
    assert "limit" in failure(await api.post(f"{V4}/quick/instances", json=params), 400)


async def test_bad_path_values(api: httpx.AsyncClient) -> None:
    assert "workflow name" in failure(await api.get(f"{V4}/bad%20name!"), 400)
    assert "workflow name" in failure(await api.get(f"{V4}/{'w' * 65}"), 400)
    failure(await api.get(f"{V4}/quick/instances/bad%21id"), 400)
    failure(await api.get(f"{V4}/nope/instances"), 404, 10200)
    failure(await api.get(f"{V4}/quick/instances/nope"), 404, 10400)
    failure(await api.get(f"{V4}/quick/instances?per_page=abc"), 400)
    failure(await api.get(f"{V4}/quick/instances?status=sleeping"), 400)
    failure(await api.get(f"{V4}/quick/instances?date_start=yesterday"), 400)
    failure(await api.get(f"{V4}/quick/instances?direction=up"), 400)
    failure(await api.get(f"{V4}/quick/instances/x/step"), 404)
    failure(await api.get(f"{V4}?page=0"), 400)


async def test_create_params_forms_and_trailing_slash_list(api: httpx.AsyncClient) -> None:
    create = f"{V4}/quick/instances"
    result(await api.post(create, json={"instance_id": "s", "params": '{"a": [1]}'}))
    result(await api.post(create, json={"instance_id": "o", "params": {"a": [1]}}))
    result(await api.post(create, content=b""))  # no body: random id, params {}
    done = await wait_status(api, f"{create}/s", {"complete"})
    assert done["params"] == {"a": [1]}
    assert (await wait_status(api, f"{create}/o", {"complete"}))["params"] == {"a": [1]}
    listed = result(await api.get(create + "/"))
    assert len(listed) == 3 and {"s", "o"} <= {i["id"] for i in listed}
    simple = result(await api.get(f"{create}/s?simple=true&order=desc"))
    assert "steps" not in simple and simple["step_count"] == 1


async def test_cursor_paging_walks_every_instance_once(api: httpx.AsyncClient) -> None:
    result(await api.put(f"{V4}/parked", json={"class_name": "Parked", "script_name": "x"}))
    batch = [{"instance_id": f"i{n:02d}"} for n in range(23)]
    assert len(result(await api.post(f"{V4}/parked/instances/batch", json=batch))) == 23
    seen: list[str] = []
    url = f"{V4}/parked/instances?per_page=5&direction=asc"
    pages = 0
    while True:
        response = await api.get(url)
        body = response.json()
        seen += [i["id"] for i in body["result"]]
        pages += 1
        cursor = body["result_info"].get("cursor")
        if not cursor:
            break
        url = f"{V4}/parked/instances?per_page=5&direction=asc&cursor={cursor}"
    assert seen == [f"i{n:02d}" for n in range(23)] and pages == 5
    info = (await api.get(f"{V4}/parked/instances?per_page=5&page=5")).json()["result_info"]
    assert info == {"page": 5, "per_page": 5, "count": 3, "total_count": 23, "total_pages": 5}
    assert result(await api.get(f"{V4}/parked/instances?per_page=5&page=6")) == []
    assert result(await api.get(f"{V4}/parked/instances?status=rollingBack")) == []
    assert len(result(await api.get(f"{V4}/parked/instances?date_start=2000-01-01T00:00:00.000Z"))) == 23
    assert result(await api.get(f"{V4}/parked/instances?date_end=2000-01-01T00:00:00")) == []


async def test_batch_delete_reports_each_id(api: httpx.AsyncClient) -> None:
    result(await api.put(f"{V4}/parked", json={"class_name": "Parked", "script_name": "x"}))
    result(await api.post(f"{V4}/parked/instances/batch", json=[{"instance_id": "a"}, {"instance_id": "b"}]))
    out = result(await api.post(f"{V4}/parked/instances/batch/delete", json={"instances": ["a", "zz", "a", "b"]}))
    assert out["deleted"] == [{"id": "a"}, {"id": "a"}, {"id": "b"}]
    assert [(e["id"], e["code"]) for e in out["errors"]] == [("zz", 10400)]
    failure(await api.post(f"{V4}/parked/instances/batch/delete", json={"instances": ["ok", "not ok!"]}), 400)
    failure(await api.post(f"{V4}/parked/instances/batch/delete", json={"instances": []}), 400)


async def test_terminate_by_status_is_a_background_job(api: httpx.AsyncClient) -> None:
    result(await api.put(f"{V4}/parked", json={"class_name": "Parked", "script_name": "x"}))
    result(await api.post(f"{V4}/parked/instances/batch", json=[{"instance_id": f"t{n}"} for n in range(30)]))
    failure(await api.put(f"{V4}/parked/instances/terminate?status=complete"), 400)
    first = result(await api.put(f"{V4}/parked/instances/terminate?status=queued"))
    second = result(await api.put(f"{V4}/parked/instances/terminate?status=queued"))
    assert first == {"status": "ok"} and second["status"] in {"ok", "already_running"}
    for _ in range(400):
        counts = result(await api.get(f"{V4}/parked"))["instances"]
        if counts["terminated"] == 30:
            break
        await asyncio.sleep(0.025)
    assert counts["terminated"] == 30 and counts["queued"] == 0
    put = result(await api.put(f"{V4}/parked", json={"class_name": "Parked", "script_name": "x"}))
    assert put["terminator_running"] == 0


async def test_memberships_for_wrangler_without_an_account_id(api: httpx.AsyncClient) -> None:
    (membership,) = result(await api.get("/client/v4/memberships?page=1"))
    assert membership["account"]["id"] == "local"


@pytest.mark.parametrize("prefix", EXPLORERS)
async def test_local_explorer_api(api: httpx.AsyncClient, prefix: str) -> None:
    wfs = result(await api.get(f"{prefix}/workflows"))
    assert {"name", "class_name", "script_name"} <= set(wfs[0])
    described = result(await api.get(f"{prefix}/workflows/waiter"))
    assert described["class_name"] == "Waiter" and described["instances"]["queued"] == 0
    created = result(await api.post(f"{prefix}/workflows/waiter/instances", json={"id": "x1", "params": {"p": 1}}))
    assert created["id"] == "x1"
    failure(await api.post(f"{prefix}/workflows/waiter/instances", json={"instance_id": "x2"}), 400)
    one = f"{prefix}/workflows/waiter/instances/x1"
    doc = await wait_status(api, one, {"waiting"})
    assert {"status", "params", "queued", "start", "end", "output", "error", "steps", "step_count"} <= set(doc)
    page = (await api.get(f"{prefix}/workflows/waiter/instances?status=waiting&per_page=10&page=1")).json()
    assert [i["id"] for i in page["result"]] == ["x1"] and {"id", "status", "created_on"} <= set(page["result"][0])
    assert {"page", "per_page", "total_count", "total_pages"} <= set(page["result_info"])
    assert result(await api.patch(one + "/status", json={"action": "pause"}))["success"] is True
    assert result(await api.get(one))["status"] == "paused"
    assert result(await api.patch(one + "/status", json={"action": "resume"}))["success"] is True
    failure(await api.patch(one + "/status", json={"action": "explode"}), 400)
    await wait_status(api, one, {"waiting"})
    assert result(await api.post(one + "/events/approval", json={"yes": 1}))["success"] is True
    assert (await wait_status(api, one, {"complete"}))["output"]["approval"] == {"yes": 1}
    assert result(await api.delete(one)) == {"success": True}
    failure(await api.get(one), 404)
    result(await api.post(f"{V4}/failing/instances", json={}))
    assert result(await api.delete(f"{prefix}/workflows/failing")) == {"status": "ok", "success": True}
    failure(await api.get(f"{prefix}/workflows/failing"), 404, 10200)


async def test_events_with_an_empty_body_carry_null(api: httpx.AsyncClient) -> None:
    result(await api.post(f"{V4}/waiter/instances", json={"instance_id": "e1"}))
    await wait_status(api, f"{V4}/waiter/instances/e1", {"waiting"})
    sent = result(await api.post(f"{V4}/waiter/instances/e1/events/approval", content=b""))
    assert sent["instanceId"] == "e1"
    done = await wait_status(api, f"{V4}/waiter/instances/e1", {"complete"})
    assert done["output"]["approval"] is None
    failure(await api.post(f"{V4}/waiter/instances/e1/events/approval", json={}), 409, 10402)


async def test_status_patch_checks_its_body(api: httpx.AsyncClient) -> None:
    result(await api.put(f"{V4}/parked", json={"class_name": "Parked", "script_name": "x"}))
    result(await api.post(f"{V4}/parked/instances", json={"instance_id": "p"}))
    path = f"{V4}/parked/instances/p/status"
    failure(await api.patch(path, json={"status": "pause", "rollback": True}), 400)
    failure(await api.patch(path, json={"status": "pause", "from": {"name": "x"}}), 400)
    failure(await api.patch(path, json={"status": "restart", "from": {"name": "x", "count": 0}}), 400)
    failure(await api.patch(path, json={"status": "restart", "from": "x"}), 400)
    failure(await api.patch(path, content=b""), 400)
    assert result(await api.patch(path, json={"status": "terminate", "rollback": True}))["status"] == "terminated"
    assert json.loads((await api.get(f"{V4}/parked/instances/p")).text)["result"]["steps"][-1]["type"] == "termination"


def test_the_server_stays_optional() -> None:
    import subprocess
    import sys

    code = (
        "import sys, stepstone, stepstone.engine, stepstone.cli\n"
        "assert 'starlette' not in sys.modules and 'uvicorn' not in sys.modules\n"
        "sys.modules['starlette'] = None\n"
        "try:\n"
        "    import stepstone.server\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'stepstone[server]'" in done.stdout
