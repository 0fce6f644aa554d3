"""Workflow versions: a new version id whenever the workflow's code changes, recorded per instance (the version
that created it, and each other version that ran it), listed by ``GET …/versions`` newest first with each
version's diagram, on SQLite and PostgreSQL, through the Python API, a real ``stepstone serve`` process (which runs
no user code: the versions and diagrams come from the database), the official ``cloudflare`` SDK and the CLI."""

from __future__ import annotations

import importlib.util
import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from cloudflare import Cloudflare, NotFoundError

from stepstone import Engine, WorkflowEntrypoint
from stepstone.testing import wait_for_event_wait, wait_for_status
from tests.test_server_cli import serve_process

V4 = "/client/v4/accounts/local/workflows"
_modules = itertools.count()

V1 = """
from stepstone import WorkflowEntrypoint


def price(order):
    return order["qty"] * 3


class Checkout(WorkflowEntrypoint):
    async def run(self, event, step):
        total = await step.do("charge card", lambda: price(event.payload))
        await step.wait_for_event("shipped", "shipped", timeout="1 hour")
        return {"total": total}
"""
V2 = V1.replace(
    '        return {"total": total}',
    '        receipt = await step.do("send receipt", lambda: f"receipt {total}")\n'
    '        return {"total": total, "receipt": receipt}',
)
HELPER = "RATE = 3\n"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_url"))
    return str(request.getfixturevalue("postgres_url"))


def load(project: Path, code: str, *, file: str = "checkout.py") -> type[WorkflowEntrypoint]:
    """Write the project's module and import it afresh (a new deploy of the same file)."""
    path = project / file
    path.write_text(textwrap.dedent(code))
    name = f"versions_project_{next(_modules)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    cls: type[WorkflowEntrypoint] = module.Checkout
    return cls


async def deploy(url: str, cls: type[WorkflowEntrypoint]) -> Engine:
    engine = Engine(url, poll_interval=0.05)
    engine.register(cls, name="checkout")
    await engine.start()
    return engine


async def test_a_code_change_is_a_new_version_and_instances_say_which_versions_ran_them(
    url: str, tmp_path: Path
) -> None:
    engine = await deploy(url, load(tmp_path, V1))
    try:
        (v1,) = await engine.storage.list_versions("local", "checkout")
        same = await deploy(url, load(tmp_path, V1))  # the same code in another process: the same version
        await same.stop()
        assert [v.id for v in await engine.storage.list_versions("local", "checkout")] == [v1.id]
        old = await engine.workflow("checkout").create(id="old", params={"qty": 2})
        await wait_for_event_wait(old, "shipped")
    finally:
        await engine.stop()

    engine = await deploy(url, load(tmp_path, V2))  # a new deploy: the code changed under a waiting instance
    try:
        versions = await engine.storage.list_versions("local", "checkout")
        assert len(versions) == 2 and versions[1].id == v1.id
        v2 = versions[0]
        assert v2.id != v1.id and v2.class_name == "Checkout" and v2.graph is not None
        old = await engine.workflow("checkout").get("old")
        await old.send_event("shipped", {})
        assert (await wait_for_status(old, "complete")).output == {"total": 6, "receipt": "receipt 6"}
        doc = await old.describe()
        assert doc["versionId"] == v1.id  # Cloudflare's field: the version that created it
        assert [v["id"] for v in doc["ran_versions"]] == [v1.id, v2.id] and doc["divergence"] is None
        new = await engine.workflow("checkout").create(id="new", params={"qty": 1})
        await wait_for_event_wait(new, "shipped")
        doc = await new.describe()
        assert doc["versionId"] == v2.id and [v["id"] for v in doc["ran_versions"]] == [v2.id]
    finally:
        await engine.stop()

    # a helper module of the project the workflow imports is part of its code: changing it is a new version
    (tmp_path / "rates.py").write_text(HELPER)
    with_helper = V1.replace(
        'def price(order):\n    return order["qty"] * 3',
        'from rates import RATE\n\n\ndef price(order):\n    return order["qty"] * RATE',
    )
    sys.path.insert(0, str(tmp_path))
    try:
        sys.modules.pop("rates", None)
        engine = await deploy(url, load(tmp_path, with_helper))
        first = (await engine.storage.list_versions("local", "checkout"))[0].id
        await engine.stop()
        (tmp_path / "rates.py").write_text("RATE = 4\n")
        sys.modules.pop("rates", None)
        engine = await deploy(url, load(tmp_path, with_helper))
        second = (await engine.storage.list_versions("local", "checkout"))[0].id
        await engine.stop()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("rates", None)
    assert len({first, second, v1.id, v2.id}) == 4

    # back to the first code: its version again (the same id), now the latest
    engine = await deploy(url, load(tmp_path, V1))
    try:
        versions = await engine.storage.list_versions("local", "checkout")
        assert versions[0].id == v1.id and versions[0].created_on == v1.created_on
        assert versions[0].modified_on > v1.modified_on and len(versions) == 4
    finally:
        await engine.stop()


def _result(answer: httpx.Response) -> Any:
    assert answer.status_code == 200, answer.text
    return answer.json()["result"]


async def test_versions_and_their_graphs_over_rest_the_sdk_and_the_cli(url: str, tmp_path: Path) -> None:
    engine = await deploy(url, load(tmp_path, V1))
    await engine.workflow("checkout").create(id="a", params={"qty": 1})
    await engine.stop()
    engine = await deploy(url, load(tmp_path, V2))
    made = await engine.workflow("checkout").create(id="b", params={"qty": 1})
    await wait_for_event_wait(made, "shipped")
    await engine.stop()
    with serve_process(["--database", url], {}, tmp_path) as (_, base):
        listed = _result(httpx.get(f"{base}{V4}/checkout/versions"))
        assert len(listed) == 2 and all(v["has_dag"] is True and v["language"] == "python" for v in listed)
        latest, first = listed[0]["id"], listed[1]["id"]
        assert _result(httpx.get(f"{base}{V4}/checkout"))["id"] == "checkout"
        assert _result(httpx.get(f"{base}{V4}/checkout/instances/b"))["versionId"] == latest
        assert _result(httpx.get(f"{base}{V4}/checkout/instances/a"))["versionId"] == first
        page = httpx.get(f"{base}{V4}/checkout/versions", params={"per_page": 1, "page": 2}).json()
        assert [v["id"] for v in page["result"]] == [first] and page["result_info"]["total_count"] == 2

        graph = _result(httpx.get(f"{base}{V4}/checkout/versions/{latest}/graph"))["graph"]
        names = [(n["type"], n.get("name")) for n in graph["workflow"]["nodes"]]
        assert names == [("step_do", "charge card"), ("step_wait_for_event", "shipped"), ("step_do", "send receipt")]
        assert graph["workflow"]["nodes"][1]["options"] == {"event_type": "shipped", "timeout": "1 hour"}
        for bad in ("nope", "x" * 65, "a%00b"):
            missing = httpx.get(f"{base}{V4}/checkout/versions/{bad}")
            assert missing.status_code == 404 and "not found in workflow 'checkout'" in missing.text

        with Cloudflare(api_token="t", base_url=base + "/client/v4") as client:
            versions = list(client.workflows.versions.list("checkout", account_id="local"))
            assert [v.id for v in versions] == [latest, first] and versions[0].has_dag is True
            drawn = client.workflows.versions.graph(first, account_id="local", workflow_name="checkout")
            assert drawn.graph is not None and [n.type for n in drawn.graph.workflow.nodes] == [
                "step_do",
                "step_wait_for_event",
            ]
            with pytest.raises(NotFoundError):
                client.workflows.versions.get("no-such", account_id="local", workflow_name="checkout")

        described = subprocess.run(
            [sys.executable, "-m", "stepstone.cli", "workflows", "describe", "checkout", "--graph", "--api", base],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        )
        assert described.returncode == 0, described.stderr
        text = described.stdout
        assert "Id:" in text and latest in text and "Earlier Versions:" in text and first in text
        assert "Graph:\n  Checkout.run:\n    do 'charge card'" in text
        assert "wait 'shipped'  for event shipped, timeout 1 hour" in text and "do 'send receipt'" in text
