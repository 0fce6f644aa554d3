"""The Worker's ``fetch`` served on the API's port over real HTTP (uvicorn on a loopback port, as ``stepstone serve``
runs it): Cloudflare's paths stay the API's, everything else is the Worker's; Request/Response over the wire;
``ctx.wait_until``; a raising handler; an ASGI ``Default``; the dashboard under ``/cdn-cgi/stepstone/``; and the
``scheduled`` handler at ``[triggers] crons``."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstone.cron import parse_cron
from stepstone.pytest_plugin import TestProject, open_project
from stepstone.runtime import HandlerError, ScheduledController, WorkerRuntime, fire_crons, load_runtime, worker_app
from stepstone.server import serve
from stepstone.testing import wait_for_status

CONFIG = """
name = "shop"
main = "src/entry.py"
compatibility_date = "2026-05-08"
compatibility_flags = ["python_workers", "python_workflows"]

[vars]
GREETING = "hello"

[triggers]
crons = ["*/5 * * * *", "0 9 * * MON"]

[[workflows]]
name = "orders"
binding = "ORDERS"
class_name = "Order"
"""

CODE = """
import asyncio
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint

FIRED = []


class Order(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do("total")
        async def total():
            return sum(item["price"] for item in event.payload.get("items", []))

        return {"total": await total()}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        path = urlparse(request.url).path
        if path == "/orders" and request.method == "POST":
            body = await request.json()
            instance = await self.env.ORDERS.create(params=body)
            return Response.json({"id": instance.id}, status=201, headers={"X-Greeting": self.env.GREETING})
        if path.startswith("/orders/"):
            instance = await self.env.ORDERS.get(path.rsplit("/", 1)[1])
            return Response.json(await instance.status())
        if path == "/later":
            async def later():
                await asyncio.sleep(0.05)
                await self.env.ORDERS.create(id="from-wait-until", params={"items": []})
            self.ctx.wait_until(later())
            return Response("accepted", status=202)
        if path == "/boom":
            raise RuntimeError("the handler broke")
        if path == "/echo":
            return Response(
                await request.bytes(),
                headers={"content-type": request.headers.get("content-type", "application/octet-stream"),
                         "x-url": request.url, "x-method": str(request.method)},
            )
        return Response("not here", status=404)

    async def scheduled(self, controller, env, ctx):
        FIRED.append((controller.cron, controller.scheduledTime))
        await env.ORDERS.create(id=f"cron-{controller.scheduled_time}", params={"items": [{"price": 1}]})
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_project(root: Path, code: str = CODE, config: str = CONFIG) -> Path:
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "entry.py").write_text(code)
    (root / "wrangler.toml").write_text(config)
    return root / "wrangler.toml"


@contextlib.asynccontextmanager
async def served(loaded: TestProject, *, max_body: int | None = None) -> AsyncIterator[httpx.AsyncClient]:
    runtime = load_runtime(loaded.project, loaded.engine)
    app = worker_app(runtime) if max_body is None else worker_app(runtime, max_body=max_body)
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve(loaded.engine, port=port, ready=ready, worker=app))
    await asyncio.wait_for(ready.wait(), 30)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.stepstone_postgres)])
async def shop(request: pytest.FixtureRequest, tmp_path: Path, stepstone_database: str) -> AsyncIterator[TestProject]:
    async with open_project(write_project(tmp_path), stepstone_database) as loaded:
        yield loaded


async def test_fetch_creates_an_instance_and_the_api_keeps_its_paths(shop: TestProject) -> None:
    async with served(shop) as http:
        made = await http.post("/orders", json={"items": [{"price": 3}, {"price": 4}]})
        assert made.status_code == 201, made.text
        assert made.headers["x-greeting"] == "hello" and made.headers["content-type"] == "application/json"
        instance_id = made.json()["id"]
        await wait_for_status(await shop.env.ORDERS.get(instance_id))
        status = await http.get(f"/orders/{instance_id}")
        assert status.json() == {"status": "complete", "output": {"total": 7}}
        # Cloudflare's paths are the API's; the workflow's script name is the project's name
        listed = await http.get("/client/v4/accounts/local/workflows")
        assert [(w["name"], w["script_name"]) for w in listed.json()["result"]] == [("orders", "shop")]
        assert (await http.get("/health")).json()["result"]["status"] == "ok"
        assert (await http.get(f"/cdn-cgi/explorer/api/workflows/orders/instances/{instance_id}")).status_code == 200
        # the dashboard moved under /cdn-cgi/stepstone/, the root is the Worker's
        page = await http.get("/cdn-cgi/stepstone/", follow_redirects=True)
        assert page.status_code == 200 and "orders" in page.text and "/cdn-cgi/stepstone/dashboard/static/" in page.text
        assert (await http.get("/")).text == "not here"
        assert (await http.get("/accounts/local/workflows")).text == "not here"


async def test_request_and_response_cross_the_wire(shop: TestProject) -> None:
    async with served(shop) as http:
        answer = await http.put("/echo?x=1&y=%20", content=b"\x00\xffbytes", headers={"content-type": "app/bin"})
        assert answer.content == b"\x00\xffbytes" and answer.headers["content-type"] == "app/bin"
        assert answer.headers["x-url"] == f"{http.base_url}/echo?x=1&y=%20".replace(":/", ":/", 1)
        assert answer.headers["x-method"] == "PUT"
        empty = await http.get("/echo")
        assert (empty.status_code, empty.content) == (200, b"")


async def test_wait_until_runs_after_the_response(shop: TestProject) -> None:
    async with served(shop) as http:
        answer = await http.get("/later")
        assert (answer.status_code, answer.text) == (202, "accepted")
        deadline = asyncio.get_running_loop().time() + 20
        while True:  # created by the wait_until task, after the answer
            try:
                await shop.env.ORDERS.get("from-wait-until")
                break
            except Exception:
                assert asyncio.get_running_loop().time() < deadline, "the wait_until task never created it"
                await asyncio.sleep(0.05)


async def test_a_raising_handler_is_a_500_without_its_traceback(shop: TestProject, caplog: Any) -> None:
    async with served(shop) as http:
        answer = await http.get("/boom")
        assert answer.status_code == 500
        assert "RuntimeError" not in answer.text and "fetch handler raised" in answer.text
    assert "the handler broke" in caplog.text


async def test_a_body_over_the_limit_is_a_413(shop: TestProject) -> None:
    async with served(shop, max_body=1000) as http:
        answer = await http.post("/echo", content=b"x" * 5000)
        assert answer.status_code == 413


async def test_an_asgi_default_is_served_with_the_env_in_its_scope(tmp_path: Path, db_url: str) -> None:
    code = """
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def hello(request: Request):
    return JSONResponse({"message": request.scope["env"].GREETING, "name": request.path_params["name"]})


Default = Starlette(routes=[Route("/hi/{name}", hello)])
"""
    config = 'name = "asgi-app"\nmain = "src/entry.py"\n[vars]\nGREETING = "hello"\n'
    async with open_project(write_project(tmp_path, code, config), db_url) as loaded, served(loaded) as http:
        answer = await http.get("/hi/ada")
        assert answer.json() == {"message": "hello", "name": "ada"}


async def test_scheduled_runs_for_each_matching_cron(shop: TestProject) -> None:
    runtime = load_runtime(shop.project, shop.engine)
    crons = [parse_cron(c) for c in shop.config.crons]
    monday_nine = datetime(2026, 12, 7, 9, 0, 30, tzinfo=UTC)  # a Monday: both crons match
    assert await fire_crons(runtime, crons, monday_nine) == ["*/5 * * * *", "0 9 * * MON"]
    ms = int(monday_nine.replace(second=0).timestamp() * 1000)
    fired = runtime.module.FIRED  # type: ignore[attr-defined]
    assert fired == [("*/5 * * * *", ms), ("0 9 * * MON", ms)]
    assert await fire_crons(runtime, crons, datetime(2026, 12, 7, 9, 1, tzinfo=UTC)) == []
    claimed: set[str] = set()

    async def claim(key: str, expires_at: float) -> bool:
        first = key not in claimed
        claimed.add(key)
        return first

    at = datetime(2026, 12, 7, 10, 5, tzinfo=UTC)
    assert await fire_crons(runtime, crons, at, claim=claim) == ["*/5 * * * *"]
    assert await fire_crons(runtime, crons, at, claim=claim) == []  # another process already ran this firing
    controller = ScheduledController(1, "* * * * *")
    controller.noRetry()
    assert controller.scheduledTime == 1


def test_handlers_are_found_and_called_relaxed(tmp_path: Path) -> None:
    import types

    module = types.ModuleType("m")
    exec(
        "from stepstone.workers import WorkerEntrypoint\n"
        "class Default(WorkerEntrypoint):\n"
        "    async def fetch(self):\n        return 1\n",
        module.__dict__,
    )
    runtime = WorkerRuntime(module, env=None)
    assert runtime.handlers() == ["fetch"] and runtime.name == "Default"
    assert asyncio.run(runtime.invoke("fetch", object())) == 1
    with pytest.raises(HandlerError, match="no queue handler"):
        asyncio.run(runtime.invoke("queue", object()))
    old = types.ModuleType("old")
    exec("async def on_fetch(request, env):\n    return env\n", old.__dict__)
    assert WorkerRuntime(old, env="E").handlers() == ["fetch"]
    assert asyncio.run(WorkerRuntime(old, env="E").invoke("fetch", None)) == "E"
    bad = types.ModuleType("bad")
    bad.Default = 3  # type: ignore[attr-defined]
    with pytest.raises(HandlerError, match="must be a WorkerEntrypoint subclass or an ASGI application"):
        WorkerRuntime(bad, env=None)


def test_declares_worker_reads_main_without_importing_it(tmp_path: Path) -> None:
    from stepstone.runtime import declares_worker

    main = tmp_path / "entry.py"
    cases = {
        "class Default(WorkerEntrypoint):\n    pass\n": True,
        "Default = make_app()\n": True,
        "from app import Default\n": True,
        "from app import server as Default\n": True,
        "async def on_fetch(request, env):\n    pass\n": True,
        "def helper():\n    Default = 1\n": False,
        "class Hello(WorkflowEntrypoint):\n    pass\n": False,
        "this is not python(": False,
    }
    for source, expected in cases.items():
        main.write_text("raise SystemExit('never imported')\n" + source)
        assert declares_worker(main) is expected, source
    assert declares_worker(tmp_path / "missing.py") is False


async def test_the_project_fixture_calls_the_worker_in_process(shop: TestProject) -> None:
    made = await shop.fetch("/orders", method="POST", body='{"items": [{"price": 2}]}')
    assert made.status == 201
    status = await wait_for_status(await shop.env.ORDERS.get((await made.json())["id"]))
    assert status.output == {"total": 2}
    later = await shop.fetch("/later")
    assert later.status == 202
    await shop.env.ORDERS.get("from-wait-until")  # wait_until work is done when fetch returns
    await shop.scheduled("*/5 * * * *", scheduled_time=1786000000000)
    cron = await wait_for_status(await shop.env.ORDERS.get("cron-1786000000000"))
    assert cron.output == {"total": 1}
