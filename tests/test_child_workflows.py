"""``step.run_workflow``: a child instance whose output the parent awaits while hibernating, on SQLite and
PostgreSQL: created once, its output or error recorded once, linked both ways in ``describe`` and REST,
terminated with its parent unless told otherwise."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stepstone import Engine, NonRetryableError, WorkflowEntrypoint, WorkflowTimeoutError
from stepstone.errors import ValidationError
from stepstone.testing import wait_for_event_wait, wait_for_status

V4 = "/client/v4/accounts/local/workflows"
RUNS: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _fresh() -> None:
    RUNS.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_url"))
    return str(request.getfixturevalue("postgres_url"))


class Resize(WorkflowEntrypoint):
    """The child: waits for a ``go`` event (so the test holds it), then fails or returns."""

    async def run(self, event: Any, step: Any) -> Any:
        go = await step.wait_for_event("go", "go", timeout="1 hour")
        if go.payload.get("fail"):
            await step.do("fail", lambda: (_ for _ in ()).throw(NonRetryableError("bad image", "ImageError")))

        def work() -> str:
            RUNS[event.instance_id] = RUNS.get(event.instance_id, 0) + 1
            return f"resized {event.payload['key']}"

        return {"out": await step.do("resize", work)}


class Album(WorkflowEntrypoint):
    """The parent: one child per key, awaited one after the other; a child's error is caught and reported."""

    async def run(self, event: Any, step: Any) -> Any:
        results = []
        for key in event.payload["keys"]:
            try:
                done = await step.run_workflow("resize", {"key": key}, config=event.payload.get("config"))
                results.append(done["out"])
            except NonRetryableError as exc:
                results.append(f"{exc.name}: {exc}")
            except WorkflowTimeoutError as exc:
                results.append(f"timeout: {exc}")
        return results


@pytest.fixture
async def engine(url: str) -> AsyncIterator[Engine]:
    async with Engine(url, poll_interval=0.05) as eng:
        eng.register(Resize, name="resize")
        eng.register(Album, name="album")
        yield eng


async def test_the_parent_hibernates_until_the_child_finishes_and_gets_its_output(engine: Engine) -> None:
    album = await engine.workflow("album").create(id="a1", params={"keys": ["k1", "k2"]})
    for n in (1, 2):
        child = await _child(engine, f"a1-resize-{n}")
        await wait_for_event_wait(child, "go")
        # hibernating (no coroutine holds the parent) once it has suspended, which may come after the child waits
        await wait_for_status(album, "waiting")
        await child.send_event("go", {})
    assert (await wait_for_status(album, "complete")).output == ["resized k1", "resized k2"]
    assert RUNS == {"a1-resize-1": 1, "a1-resize-2": 1}
    doc = await album.describe()
    assert doc["children"] == [
        {"workflow": "resize", "id": "a1-resize-1", "status": "complete"},
        {"workflow": "resize", "id": "a1-resize-2", "status": "complete"},
    ]
    waits = [s for s in doc["steps"] if s["type"] == "waitForEvent"]
    assert [(w["name"], w["child"], w["output"]) for w in waits] == [
        ("resize-1", {"workflow": "resize", "id": "a1-resize-1"}, {"out": "resized k1"}),
        ("resize-2", {"workflow": "resize", "id": "a1-resize-2"}, {"out": "resized k2"}),
    ]
    assert child is not None
    child_doc = await child.describe()
    assert child_doc["parent"] == {"workflow": "album", "id": "a1", "status": "complete"}
    assert "children" not in child_doc


async def _child(engine: Engine, instance_id: str) -> Any:
    wf = engine.workflow("resize")
    for _ in range(2000):
        page = await wf.list_instances(limit=100)
        if any(r.id == instance_id for r in page.items):
            return await wf.get(instance_id)
        await asyncio.sleep(0.01)
    raise AssertionError(f"child {instance_id} never created")


async def test_a_failed_or_terminated_child_raises_a_non_retryable_error(engine: Engine) -> None:
    album = await engine.workflow("album").create(id="a2", params={"keys": ["k1", "k2"]})
    first = await _child(engine, "a2-resize-1")
    await wait_for_event_wait(first, "go")
    await first.send_event("go", {"fail": True})
    second = await _child(engine, "a2-resize-2")
    await wait_for_event_wait(second, "go")
    await second.terminate()
    assert (await wait_for_status(album, "complete")).output == [
        'ImageError: child instance "a2-resize-1" of workflow "resize" errored: bad image',
        'ChildWorkflowError: child instance "a2-resize-2" of workflow "resize" was terminated',
    ]


async def test_terminating_the_parent_terminates_its_children_unless_told_not_to(engine: Engine) -> None:
    album = await engine.workflow("album").create(id="a3", params={"keys": ["k1"]})
    child = await _child(engine, "a3-resize-1")
    await wait_for_event_wait(child, "go")
    await album.terminate()
    assert (await child.status()).status == "terminated"

    keep = {"terminate_with_parent": False}
    album = await engine.workflow("album").create(id="a4", params={"keys": ["k1"], "config": keep})
    child = await _child(engine, "a4-resize-1")
    await wait_for_event_wait(child, "go")
    await album.terminate()
    assert (await child.status()).status == "waiting"
    await child.send_event("go", {})
    assert (await wait_for_status(child, "complete")).output == {"out": "resized k1"}


async def test_a_timeout_raises_and_the_child_runs_on(engine: Engine) -> None:
    album = await engine.workflow("album").create(id="a5", params={"keys": ["k1"], "config": {"timeout": "1 second"}})
    assert (await wait_for_status(album, "complete")).output == [
        'timeout: child instance "a5-resize-1" of workflow "resize" did not finish in time'
    ]
    child = await engine.workflow("resize").get("a5-resize-1")
    assert (await child.status()).status == "waiting"


class Given(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        try:
            return await step.run_workflow(
                "resize", {"key": "x"}, id=event.payload["id"], config=event.payload.get("c")
            )
        except (NonRetryableError, ValidationError) as exc:
            return f"{type(exc).__name__}: {exc}"


async def test_an_id_in_use_by_another_instance_and_bad_options_are_errors(engine: Engine) -> None:
    engine.register(Given, name="given")
    await engine.workflow("resize").create(id="taken", params={"key": "y"})
    inst = await engine.workflow("given").create(params={"id": "taken"})
    assert "already exists and was not started by this instance" in (await wait_for_status(inst)).output
    for config, message in [
        ({"retries": 1}, "unknown config key 'retries'"),
        ({"timeout": "soon"}, "timeout"),
        ({"terminate_with_parent": 1}, "terminate_with_parent 1 must be True or False"),
    ]:
        inst = await engine.workflow("given").create(params={"id": "fresh", "c": config})
        output = (await wait_for_status(inst)).output
        assert output.startswith("ValidationError") and message in output, output


async def test_rest_shows_the_links(engine: Engine) -> None:
    from stepstone.cli.describe import render_instance
    from stepstone.server import create_app

    album = await engine.workflow("album").create(id="a6", params={"keys": ["k1"]})
    child = await _child(engine, "a6-resize-1")
    await wait_for_event_wait(child, "go")
    transport = httpx.ASGITransport(app=create_app(engine, loopback_only=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8787") as api:
        doc = (await api.get(f"{V4}/album/instances/a6")).json()["result"]
        assert doc["children"] == [{"workflow": "resize", "id": "a6-resize-1", "status": "waiting"}]
        assert doc["steps"][0]["child"] == {"workflow": "resize", "id": "a6-resize-1"}
        text = render_instance(doc, "album")
        assert "resize a6-resize-1 (waiting)" in text and "Child" in text
        doc = (await api.get(f"{V4}/resize/instances/a6-resize-1")).json()["result"]
        assert doc["parent"] == {"workflow": "album", "id": "a6", "status": "waiting"}
    await child.send_event("go", {})
    assert (await wait_for_status(album, "complete")).output == ["resized k1"]
