"""The ``workers`` module a Cloudflare Python Worker imports: Cloudflare's own Python Workflows starter loads and runs
unchanged, ``workers``/``workers.workflows``/``asgi`` resolve to stepstone's classes without any installed
distribution, and Request/Response/fetch behave as the Python Workers SDK's."""

from __future__ import annotations

import asyncio
import http.server
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import stepstone
from stepstone.pytest_plugin import open_project
from stepstone.testing import wait_for_status
from stepstone.workers import Context, FormData, Request, Response, fetch

# Cloudflare's Python Workflows starter, as developers.cloudflare.com/workflows/python/ gives it (code and config).
STARTER_TOML = """\
"$schema" = "./node_modules/wrangler/config-schema.json"
name = "hello-python"
main = "src/entry.py"
compatibility_flags = [ "python_workers", "python_workflows" ]
compatibility_date = "2026-05-08"

[[workflows]]
name = "workflows-demo"
binding = "MY_WORKFLOW"
class_name = "PythonWorkflowStarter"
"""

STARTER_PY = """\
from workers import Response, WorkflowEntrypoint, WorkerEntrypoint

class PythonWorkflowStarter(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do('step1')
        async def step_1():
            # does stuff
            print('executing step1')

        @step.do('step2')
        async def step_2():
            # does stuff
            print('executing step2')

        await step_1()
        await step_2()

class Default(WorkerEntrypoint):
    async def fetch(self, request):
        await self.env.MY_WORKFLOW.create()
        return Response("Hello world!")
"""

# cloudflare/python-workers-examples 10-workflows (wrangler.jsonc and src/entry.py as published).
DAG_JSONC = """\
{
\t"$schema": "node_modules/wrangler/config-schema.json",
\t"name": "python-workflows",
\t"main": "src/entry.py",
\t"compatibility_date": "2025-11-02",
\t"compatibility_flags": [
\t\t"python_workers"
\t],
\t"workflows": [
    {
      "name": "dag-workflow",
      "binding": "MY_WORKFLOW",
      "class_name": "DAGWorkflow"
    }
  ],
\t"observability": {
\t\t"enabled": true
\t}
}
"""

DAG_PY = """\
import asyncio
import random
from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint


class DAGWorkflow(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do("dependency 1")
        async def sleep_a_little():
            print("executing dep1")
            await asyncio.sleep(random.randint(1, 10) / 1000)

        @step.do("dependency 2")
        async def sleep_longer():
            print("executing dep2")
            await asyncio.sleep(random.randint(5, 15) / 1000)

        @step.do("final step", depends=[sleep_a_little, sleep_longer], concurrent=True)
        async def summarize(res1=None, res2=None):
            print("I awaited the first two steps and now I am done")

        await summarize()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)

        if url.path == "/start":
            workflow = await self.env.MY_WORKFLOW.create()
            return Response("Just kicked off a workflow with ID: " + workflow.id)

        if "/status" in url.path:
            workflow_id = url.path.split("/")[-1]
            workflow = await self.env.MY_WORKFLOW.get(workflow_id)
            status = await workflow.status()
            return Response.json(status)

        return Response(
            "Use /start or the dashboard UI to trigger the workflow.\\n Use /status/<workflow_id> or check dashboard UI to get status."
        )
"""  # noqa: E501


def starter(root: Path, config_name: str, config: str, code: str) -> Path:
    (root / "src").mkdir(parents=True, exist_ok=True)
    (root / "src" / "entry.py").write_text(code)
    path = root / config_name
    path.write_text(config)
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.stepstone_postgres)])
def database(request: pytest.FixtureRequest, stepstone_database: str) -> str:
    return stepstone_database


def module_of(loaded: object) -> object:
    return loaded.project.module()  # type: ignore[attr-defined]


async def test_cloudflares_python_workflows_starter_runs_unchanged(tmp_path: Path, database: str) -> None:
    path = starter(tmp_path, "wrangler.toml", STARTER_TOML, STARTER_PY)
    async with open_project(path, database) as loaded:
        assert loaded.config.warnings == ()
        module = module_of(loaded)
        worker = module.Default(Context(), loaded.env)  # type: ignore[attr-defined]
        response = await worker.fetch(Request("http://127.0.0.1:8787/"))
        assert (response.status, await response.text()) == (200, "Hello world!")
        [record] = await loaded.engine.list_workflows()
        assert (record.name, record.class_name, record.script_name) == (
            "workflows-demo",
            "PythonWorkflowStarter",
            "hello-python",
        )
        page = await loaded.engine.storage.list_instances("local", "workflows-demo", limit=10)
        ids = [i.id for i in page.items]
        assert len(ids) == 1
        status = await wait_for_status(await loaded.env.MY_WORKFLOW.get(ids[0]))
        assert status.status == "complete"


async def test_the_dag_example_of_python_workers_examples_runs_unchanged(tmp_path: Path, db_url: str) -> None:
    path = starter(tmp_path, "wrangler.jsonc", DAG_JSONC, DAG_PY)
    async with open_project(path, db_url) as loaded:
        worker = module_of(loaded).Default(Context(), loaded.env)  # type: ignore[attr-defined]
        started = await worker.fetch(Request("http://127.0.0.1:8787/start"))
        text = await started.text()
        assert text.startswith("Just kicked off a workflow with ID: ")
        instance_id = text.rsplit(" ", 1)[1]
        await wait_for_status(await loaded.env.MY_WORKFLOW.get(instance_id))
        answer = await worker.fetch(Request(f"http://127.0.0.1:8787/status/{instance_id}"))
        assert answer.headers["content-type"] == "application/json"
        assert await answer.json() == {"status": "complete"}


def test_workers_resolves_to_stepstone_without_an_installed_distribution(tmp_path: Path) -> None:
    import importlib.machinery

    from stepstone.workers.alias import install

    install()
    import asgi  # type: ignore[import-not-found]
    import workers  # type: ignore[import-not-found]
    import workers.workflows  # type: ignore[import-not-found]

    import stepstone.workers
    import stepstone.workers.asgi

    assert workers is stepstone.workers and asgi is stepstone.workers.asgi
    assert workers.workflows.NonRetryableError is stepstone.NonRetryableError
    assert workers.WorkflowEntrypoint is stepstone.WorkflowEntrypoint
    # nothing called workers is installed: only the finder answers, and a module's own spec stays its own
    assert importlib.machinery.PathFinder.find_spec("workers") is None
    assert not any((Path(p) / "workers").exists() for p in sys.path if p and "site-packages" in p)
    assert workers.__spec__.name == "stepstone.workers"
    with pytest.raises(ImportError):
        import workers.nothing_here  # type: ignore[import-not-found]


async def test_non_retryable_error_from_workers_workflows_fails_the_step_once(tmp_path: Path, db_url: str) -> None:
    code = """
from workers import WorkflowEntrypoint
from workers.workflows import NonRetryableError

ATTEMPTS = []

class Flaky(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do("charge", config={"retries": {"limit": 5, "delay": 1}})
        async def charge():
            ATTEMPTS.append(1)
            raise NonRetryableError("card declined")
        await charge()
"""
    toml = (
        'name = "nr"\nmain = "src/entry.py"\n[[workflows]]\nname = "flaky"\nbinding = "FLAKY"\nclass_name = "Flaky"\n'
    )
    path = starter(tmp_path, "wrangler.toml", toml, code)
    async with open_project(path, db_url) as loaded:
        instance = await loaded.env.FLAKY.create()
        status = await wait_for_status(instance)
        assert status.status == "errored"
        assert status.error is not None and "card declined" in status.error.message
        assert module_of(loaded).ATTEMPTS == [1]  # type: ignore[attr-defined]


# -- Request and Response -----------------------------------------------------------------------------------
async def test_response_json_headers_status_as_the_sdk() -> None:
    made = Response.json({"id": "a1", "n": [1, 2]}, status=201, headers={"X-Trace": "t"})
    assert made.status == 201 and made.ok and made.status_text == "Created"
    assert made.headers["content-type"] == "application/json" and made.headers["x-trace"] == "t"
    assert await made.json() == {"id": "a1", "n": [1, 2]}
    assert Response.from_json([1]).headers["Content-Type"] == "application/json"
    text = Response("hé")
    assert text.headers["content-type"] == "text/plain;charset=UTF-8"
    assert await text.bytes() == "hé".encode()
    with pytest.raises(OSError, match="Body already used"):
        await text.text()
    assert Response(b"\x00\x01").headers.get("content-type") is None
    redirect = Response.redirect("https://example.com/x", 301)
    assert (redirect.status, redirect.headers["location"]) == (301, "https://example.com/x")
    with pytest.raises(ValueError, match="status must be an integer from 200 to 599"):
        Response("x", status=99)
    status = stepstone.InstanceStatus("errored", None, stepstone.InstanceError("Error", "boom"))
    assert await Response.json(status).json() == {"status": "errored", "error": {"name": "Error", "message": "boom"}}
    cloned = Response("body")
    copy = cloned.clone()
    assert (await cloned.text(), await copy.text()) == ("body", "body")


async def test_request_reads_json_text_bytes_and_forms() -> None:
    req = Request(
        "https://x.test/a?b=1", method="POST", headers=[("Content-Type", "application/json")], body='{"k": 2}'
    )
    assert req.method == "POST" and req.url == "https://x.test/a?b=1"
    assert req.headers["content-type"] == "application/json" and req.js_object is req
    clone = req.clone()
    assert await req.json() == {"k": 2}
    assert await clone.text() == '{"k": 2}'
    assert req.body_used
    with pytest.raises(TypeError, match="GET or HEAD"):
        Request("https://x.test/", body="no")
    form = FormData({"a": "1"})
    form.append("a", "2")
    posted = Request("https://x.test/f", method="POST", body=form)
    parsed = await posted.form_data()
    assert parsed.get_all("a") == ["1", "2"] and parsed["a"] == "1"
    urlencoded = Request(
        "https://x.test/f", method="POST", headers={"content-type": "application/x-www-form-urlencoded"}, body="x=1&y="
    )
    assert dict((await urlencoded.form_data()).items()) == {"x": "1", "y": ""}


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        out = json.dumps({"path": self.path, "body": body.decode(), "auth": self.headers.get("authorization")}).encode()
        self.send_response(202)
        self.send_header("content-type", "application/json")
        self.send_header("x-seen", "yes")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("location", "/landed")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_fetch_sends_over_real_http(echo_server: str) -> None:
    answer = await fetch(echo_server + "/hook", method="POST", headers={"Authorization": "Bearer t"}, body="hi")
    assert answer.status == 202 and answer.headers["x-seen"] == "yes"
    assert await answer.json() == {"path": "/hook", "body": "hi", "auth": "Bearer t"}
    manual = await fetch(echo_server + "/go", redirect="manual")
    assert (manual.status, manual.headers["location"]) == (302, "/landed")
    with pytest.raises(OSError, match=r"fetch http://127\.0\.0\.1:1/"):
        await fetch("http://127.0.0.1:1/")


async def test_asgi_fetch_serves_a_starlette_app_with_the_env() -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    from stepstone.workers import asgi

    async def echo(request: StarletteRequest) -> JSONResponse:
        body = await request.json()
        return JSONResponse({"got": body, "msg": request.scope["env"].MESSAGE, "q": request.query_params["q"]})

    async def stream(request: StarletteRequest) -> StreamingResponse:
        async def chunks() -> object:
            for i in range(3):
                yield f"{i};"
                await asyncio.sleep(0)

        return StreamingResponse(chunks(), media_type="text/plain")  # type: ignore[arg-type]

    app = Starlette(routes=[Route("/echo", echo, methods=["POST"]), Route("/stream", stream)])

    class Env:
        MESSAGE = "My env var"

    req = Request("http://w.test/echo?q=1", method="POST", body=json.dumps({"a": 1}))
    answer = await asgi.fetch(app, req.js_object, Env())
    assert answer.status == 200
    assert await answer.json() == {"got": {"a": 1}, "msg": "My env var", "q": "1"}
    streamed = await asgi.fetch(app, Request("http://w.test/stream"), Env())
    assert await streamed.text() == "0;1;2;"
