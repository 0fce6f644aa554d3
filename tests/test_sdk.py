"""The official ``cloudflare`` SDK (pinned in the dev extra), unmodified, against a real stepstone server process.

Every workflows method, reading every field the SDK's types mark as required (docs: ``rest-clients.md``), page
iteration over many pages, and errors mapped to the SDK's exception classes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from cloudflare import AsyncCloudflare, BadRequestError, Cloudflare, ConflictError, NotFoundError

from tests.server_process import running_server

ACCOUNT = "local"  # the account of the workflows the server registers
STARTED = {"queued", "running", "complete"}
"""What a create may answer: the status is read back, and the worker may have claimed the instance already."""


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("sdk")) as base:
        yield base


@pytest.fixture
def client(base_url: str) -> Iterator[Cloudflare]:
    with Cloudflare(api_token="any-token", base_url=base_url + "/client/v4") as c:
        yield c


def wait_for(client: Cloudflare, workflow: str, instance_id: str, statuses: set[str], timeout: float = 15) -> Any:
    """Poll ``instances.get`` until the status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        got = client.workflows.instances.get(instance_id, account_id=ACCOUNT, workflow_name=workflow)
        if got.status in statuses:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{instance_id} stayed {got.status}, wanted {statuses}")
        time.sleep(0.05)


def check_workflow(w: Any) -> None:
    assert isinstance(w.id, str) and w.name == w.id
    assert isinstance(w.class_name, str) and isinstance(w.script_name, str)
    assert isinstance(w.created_on, datetime) and isinstance(w.modified_on, datetime)
    assert set(w.instances) >= {"queued", "running", "complete", "errored", "paused", "terminated", "waiting"}
    assert all(isinstance(n, int | float) for n in w.instances.values())
    assert w.triggered_on is None or isinstance(w.triggered_on, datetime)


def test_workflows_list_and_get(client: Cloudflare) -> None:
    listed = list(client.workflows.list(account_id=ACCOUNT))
    assert {w.name for w in listed} >= {"quick", "waiter", "sleeper", "failing"}
    for w in listed:
        check_workflow(w)
    got = client.workflows.get("quick", account_id=ACCOUNT)
    check_workflow(got)
    assert got.class_name == "Quick" and got.script_name == "tests"
    assert [w.name for w in client.workflows.list(account_id=ACCOUNT, search="quic")] == ["quick"]
    pages = list(client.workflows.list(account_id=ACCOUNT, per_page=1).iter_pages())
    # the SDK asks for page + 1 until a page comes back empty
    assert [len(p.result) for p in pages] == [1] * (len(pages) - 1) + [0] and len(pages) >= 5


def test_update_records_a_workflow_without_a_class_and_delete_removes_it(client: Cloudflare) -> None:
    wf = client.workflows.update(
        "remote-only",
        account_id=ACCOUNT,
        class_name="RemoteOnly",
        script_name="elsewhere",
        limits={"steps": 50},
        default_retention={"success_retention": "1 day", "error_retention": 3_600_000},
        concurrency={"limit": 3},
        schedules=[{"cron": "*/5 * * * *"}],
    )
    assert wf.id == wf.name == "remote-only"
    assert (wf.class_name, wf.script_name) == ("RemoteOnly", "elsewhere")
    assert isinstance(wf.created_on, datetime) and isinstance(wf.modified_on, datetime)
    assert wf.is_deleted == 0 and wf.terminator_running == 0 and isinstance(wf.version_id, str)
    again = client.workflows.update("remote-only", account_id=ACCOUNT, class_name="RemoteOnly", script_name="elsewhere")
    assert again.created_on == wf.created_on
    changed = client.workflows.update("remote-only", account_id=ACCOUNT, class_name="Renamed", script_name="elsewhere")
    assert changed.version_id != wf.version_id

    version = client.workflows.versions.get(changed.version_id, account_id=ACCOUNT, workflow_name="remote-only")
    assert version.limits is not None and version.limits.steps == 50
    assert version.concurrency is not None and version.concurrency.limit == 3

    # No worker here registers RemoteOnly: its instances stay queued for a worker that does.
    created = client.workflows.instances.create("remote-only", account_id=ACCOUNT, instance_id="parked")
    assert created.status == "queued"
    time.sleep(0.3)
    assert client.workflows.instances.get("parked", account_id=ACCOUNT, workflow_name="remote-only").status == "queued"
    assert client.workflows.get("remote-only", account_id=ACCOUNT).instances["queued"] == 1

    deleted = client.workflows.delete("remote-only", account_id=ACCOUNT)
    assert deleted.status == "ok" and deleted.success is True
    with pytest.raises(NotFoundError):
        client.workflows.get("remote-only", account_id=ACCOUNT)


def test_versions_list_get_and_graph(client: Cloudflare) -> None:
    versions = list(client.workflows.versions.list("quick", account_id=ACCOUNT))
    assert len(versions) == 1
    v = versions[0]
    assert isinstance(v.id, str) and v.class_name == "Quick" and v.workflow_id == "quick"
    assert isinstance(v.created_on, datetime) and isinstance(v.modified_on, datetime)
    assert v.has_dag is True and v.language == "python" and v.limits is not None
    got = client.workflows.versions.get(v.id, account_id=ACCOUNT, workflow_name="quick")
    assert got.id == v.id and got.has_dag is True and got.language == "python"
    graph = client.workflows.versions.graph(v.id, account_id=ACCOUNT, workflow_name="quick")
    assert graph.id == v.id and graph.workflow_id == "quick"
    assert isinstance(graph.created_on, datetime) and graph.class_name == "Quick"
    # the diagram of Quick.run (one step.do), parsed into the SDK's own graph types
    assert graph.graph is not None and graph.graph.version == 1
    assert graph.graph.workflow.class_name == "Quick" and graph.graph.workflow.functions == {}
    (node,) = graph.graph.workflow.nodes
    assert type(node).__name__ == "GraphWorkflowNodeUnionMember1" and node.type == "step_do"
    assert node.name == "echo" and node.config.retries.limit == 5 and node.config.timeout == "10 minutes"
    with pytest.raises(NotFoundError):
        client.workflows.versions.get("no-such-version", account_id=ACCOUNT, workflow_name="quick")


def test_create_get_and_list_fields(client: Cloudflare) -> None:
    created = client.workflows.instances.create(
        "quick", account_id=ACCOUNT, instance_id="fields-1", params=json.dumps({"n": 1, "tags": ["a"]})
    )
    assert (created.id, created.workflow_id) == ("fields-1", "quick") and created.status in STARTED
    assert isinstance(created.version_id, str) and created.trigger_source == "api"

    got = wait_for(client, "quick", "fields-1", {"complete"})
    assert got.params == {"n": 1, "tags": ["a"]}
    assert got.output == {"echo": {"n": 1, "tags": ["a"]}}
    assert got.success is True and got.error is None
    assert isinstance(got.queued, datetime) and isinstance(got.start, datetime) and isinstance(got.end, datetime)
    assert got.version_id == created.version_id  # read from camelCase versionId
    assert got.trigger.source == "api" and got.step_count == 1
    (step,) = got.steps
    assert step.type == "step" and step.name == "echo-1" and step.success is True
    assert isinstance(step.start, datetime) and isinstance(step.end, datetime)
    assert step.config.retries.limit == 5 and step.config.retries.delay == 10000 and step.config.timeout == 600000
    assert [a.success for a in step.attempts] == [True]
    assert isinstance(step.attempts[0].start, datetime) and step.attempts[0].error is None
    assert step.output == {"echo": {"n": 1, "tags": ["a"]}}
    assert got.rollback is None

    simple = client.workflows.instances.get("fields-1", account_id=ACCOUNT, workflow_name="quick", simple="true")
    assert simple.step_count == 1 and "steps" not in simple.model_fields_set and simple.status == "complete"

    listed = [i for i in client.workflows.instances.list("quick", account_id=ACCOUNT) if i.id == "fields-1"]
    (item,) = listed
    assert item.status == "complete" and item.workflow_id == "quick" and item.version_id == created.version_id
    for field in (item.created_on, item.modified_on, item.started_on, item.ended_on):
        assert isinstance(field, datetime)
    assert item.trigger_source == "api"


def test_params_as_plain_string_object_and_default(client: Cloudflare, base_url: str) -> None:
    client.workflows.instances.create("quick", account_id=ACCOUNT, instance_id="p-str", params="not json")
    client.workflows.instances.create("quick", account_id=ACCOUNT, instance_id="p-none")
    # wrangler sends params as an object: the SDK passes one through extra_body
    client.workflows.instances.create("quick", account_id=ACCOUNT, instance_id="p-obj", extra_body={"params": {"o": 1}})
    assert wait_for(client, "quick", "p-str", {"complete"}).params == "not json"
    assert wait_for(client, "quick", "p-none", {"complete"}).params == {}
    assert wait_for(client, "quick", "p-obj", {"complete"}).output == {"echo": {"o": 1}}


def test_bulk_skips_ids_in_use(client: Cloudflare) -> None:
    client.workflows.instances.create("quick", account_id=ACCOUNT, instance_id="bulk-0")
    page = client.workflows.instances.bulk(
        "quick",
        account_id=ACCOUNT,
        body=[{"instance_id": "bulk-0"}, {"instance_id": "bulk-1", "params": '{"b": 1}'}, {"instance_id": "bulk-2"}],
    )
    items = list(page)
    assert [i.id for i in items] == ["bulk-1", "bulk-2"]
    for i in items:
        assert i.status in STARTED and i.workflow_id == "quick" and isinstance(i.version_id, str)
    assert wait_for(client, "quick", "bulk-1", {"complete"}).output == {"echo": {"b": 1}}


def test_auto_pagination_over_many_pages(client: Cloudflare) -> None:
    ids = [f"many-{i:03d}" for i in range(120)]
    for chunk in (ids[:100], ids[100:]):
        client.workflows.instances.bulk("quick", account_id=ACCOUNT, body=[{"instance_id": i} for i in chunk])
    client.workflows.update("paging", account_id=ACCOUNT, class_name="Nothing", script_name="x")
    try:
        client.workflows.instances.bulk("paging", account_id=ACCOUNT, body=[{"instance_id": i} for i in ids[:100]])
        client.workflows.instances.bulk("paging", account_id=ACCOUNT, body=[{"instance_id": i} for i in ids[100:]])
        first = client.workflows.instances.list("paging", account_id=ACCOUNT, per_page=25)
        pages = list(first.iter_pages())
        assert [len(p.result) for p in pages] == [25, 25, 25, 25, 20, 0]
        seen = [i.id for i in client.workflows.instances.list("paging", account_id=ACCOUNT, per_page=25)]
        assert sorted(seen) == ids and len(set(seen)) == 120
        assert first.result_info is not None and first.result_info.total_count == 120
        oldest = [i.id for i in client.workflows.instances.list("paging", account_id=ACCOUNT, direction="asc")]
        assert oldest[0] == "many-000"
        queued = list(client.workflows.instances.list("paging", account_id=ACCOUNT, status="queued", per_page=100))
        assert len(queued) == 120
        none = list(client.workflows.instances.list("paging", account_id=ACCOUNT, status="complete"))
        assert none == []
        window = client.workflows.instances.list(
            "paging", account_id=ACCOUNT, date_start="2000-01-01T00:00:00", date_end=datetime(2100, 1, 1)
        )
        assert len(list(window)) == 120
    finally:
        client.workflows.delete("paging", account_id=ACCOUNT)


def test_waiter_steps_events_and_the_step_endpoint(client: Cloudflare) -> None:
    client.workflows.instances.create("waiter", account_id=ACCOUNT, instance_id="w-1")
    waiting = wait_for(client, "waiter", "w-1", {"waiting"})
    prepare, approval = waiting.steps
    assert [a.success for a in prepare.attempts] == [False, True]
    assert prepare.attempts[0].error.name == "RuntimeError"
    assert prepare.config.retries.backoff == "constant"
    assert approval.type == "waitForEvent" and approval.finished is False and approval.name == "approval-1"

    step = client.workflows.instances.step(
        "w-1", account_id=ACCOUNT, workflow_name="waiter", name="prepare-1", type="step"
    )
    assert step.status == "complete" and step.error is None and step.output == "prepared"
    first = client.workflows.instances.step(
        "w-1", account_id=ACCOUNT, workflow_name="waiter", name="prepare-1", type="step", attempt=1
    )
    assert first.status == "errored" and first.error.message == "first attempt fails" and first.output is None
    pending = client.workflows.instances.step(
        "w-1", account_id=ACCOUNT, workflow_name="waiter", name="approval-1", type="waitForEvent"
    )
    assert pending.status == "waiting" and pending.event_type == "approval" and pending.output is None

    sent = client.workflows.instances.events.create(
        "approval", account_id=ACCOUNT, workflow_name="waiter", instance_id="w-1", body={"ok": True}
    )
    assert sent.instance_id == "w-1" and isinstance(sent.timestamp, datetime)
    done = wait_for(client, "waiter", "w-1", {"complete"})
    assert done.output == {"prepared": "prepared", "approval": {"ok": True}, "secret_len": 6}
    assert [s.type for s in done.steps] == ["step", "waitForEvent", "step"]
    assert done.steps[2].output == "[REDACTED]"
    desc = client.workflows.instances.get("w-1", account_id=ACCOUNT, workflow_name="waiter", order="desc")
    assert [s.name for s in desc.steps] == ["secret-1", "approval-1", "prepare-1"]
    event = client.workflows.instances.step(
        "w-1", account_id=ACCOUNT, workflow_name="waiter", name="approval-1", type="waitForEvent"
    )
    assert event.status == "complete" and event.output["payload"] == {"ok": True}
    with pytest.raises(NotFoundError):
        client.workflows.instances.step("w-1", account_id=ACCOUNT, workflow_name="waiter", name="nope-1", type="step")


def test_status_pause_resume_terminate_restart(client: Cloudflare) -> None:
    status = client.workflows.instances.status
    client.workflows.instances.create("sleeper", account_id=ACCOUNT, instance_id="s-1")
    wait_for(client, "sleeper", "s-1", {"waiting"})

    paused = status.edit("s-1", account_id=ACCOUNT, workflow_name="sleeper", status="pause")
    assert paused.status == "paused" and isinstance(paused.timestamp, datetime)
    resumed = status.edit("s-1", account_id=ACCOUNT, workflow_name="sleeper", status="resume")
    assert resumed.status in {"queued", "running", "waiting"}
    wait_for(client, "sleeper", "s-1", {"waiting"})
    sleeping = client.workflows.instances.get("s-1", account_id=ACCOUNT, workflow_name="sleeper")
    nap = sleeping.steps[1]
    assert nap.type == "sleep" and nap.finished is False and isinstance(nap.end, datetime)

    ended = status.edit("s-1", account_id=ACCOUNT, workflow_name="sleeper", status="terminate", rollback=False)
    assert ended.status == "terminated"
    terminated = client.workflows.instances.get("s-1", account_id=ACCOUNT, workflow_name="sleeper")
    assert terminated.steps[-1].type == "termination" and terminated.steps[-1].trigger.source == "api"
    with pytest.raises(ConflictError):
        status.edit("s-1", account_id=ACCOUNT, workflow_name="sleeper", status="terminate")

    restarted = status.edit(
        "s-1", account_id=ACCOUNT, workflow_name="sleeper", status="restart", from_={"name": "nap", "type": "sleep"}
    )
    assert restarted.status in {"queued", "running", "waiting"}
    again = wait_for(client, "sleeper", "s-1", {"waiting"})
    assert [s.name for s in again.steps] == ["before-1", "nap-1"]
    full = status.edit("s-1", account_id=ACCOUNT, workflow_name="sleeper", status="restart")
    assert full.status in {"queued", "running", "waiting"}
    with pytest.raises(ConflictError):
        status.edit("s-1", account_id=ACCOUNT, workflow_name="sleeper", status="restart", from_={"name": "missing"})


def test_failed_instance_reports_its_error(client: Cloudflare) -> None:
    client.workflows.instances.create("failing", account_id=ACCOUNT, instance_id="f-1")
    got = wait_for(client, "failing", "f-1", {"errored"})
    assert got.success is False and got.error.name == "BoomError" and got.error.message == "no way"
    assert got.steps[0].attempts[0].error.name == "BoomError"


def test_errors_map_to_sdk_exceptions_and_409_is_not_retried(base_url: str) -> None:
    sent: list[str] = []
    hooks = {"request": [lambda request: sent.append(f"{request.method} {request.url.path}")]}
    with Cloudflare(
        api_token="t", base_url=base_url + "/client/v4", http_client=httpx.Client(event_hooks=hooks)
    ) as client:
        client.workflows.instances.create("quick", account_id=ACCOUNT, instance_id="dup")
        sent.clear()
        with pytest.raises(ConflictError) as conflict:
            client.workflows.instances.create("quick", account_id=ACCOUNT, instance_id="dup")
        assert len(sent) == 1  # x-should-retry: false stops the SDK's two retries
        assert conflict.value.body["errors"][0]["code"] == 10401  # type: ignore[index]

        with pytest.raises(NotFoundError) as missing:
            client.workflows.get("no-such-workflow", account_id=ACCOUNT)
        assert missing.value.body["errors"][0]["code"] == 10200  # type: ignore[index]
        with pytest.raises(NotFoundError) as gone:
            client.workflows.instances.get("no-such-instance", account_id=ACCOUNT, workflow_name="quick")
        assert gone.value.body["errors"][0]["code"] == 10400  # type: ignore[index]
        with pytest.raises(NotFoundError):
            client.workflows.instances.create("no-such-workflow", account_id=ACCOUNT)

        sent.clear()
        with pytest.raises(BadRequestError) as bad:
            client.workflows.instances.create("quick", account_id=ACCOUNT, instance_id="bad id!")
        assert "instance id" in bad.value.body["errors"][0]["message"]  # type: ignore[index]
        assert len(sent) == 1
        with pytest.raises(BadRequestError):
            client.workflows.instances.create("quick", account_id=ACCOUNT, instance_id="x" * 101)
        with pytest.raises(BadRequestError):
            client.workflows.instances.list("quick", account_id=ACCOUNT, per_page=0)
        with pytest.raises(BadRequestError):
            client.workflows.instances.list("quick", account_id=ACCOUNT, cursor="garbage!")
        with pytest.raises(BadRequestError):
            client.workflows.instances.bulk("quick", account_id=ACCOUNT, body=[])
        with pytest.raises(BadRequestError):
            client.workflows.instances.events.create(
                "bad type!", account_id=ACCOUNT, workflow_name="quick", instance_id="dup", body={}
            )
        with pytest.raises(BadRequestError):
            client.workflows.update("quick", account_id=ACCOUNT, class_name="", script_name="x")


async def test_async_client_covers_every_method(base_url: str) -> None:
    async with AsyncCloudflare(api_token="any", base_url=base_url + "/client/v4") as client:
        wfs = [w async for w in client.workflows.list(account_id=ACCOUNT)]
        assert "quick" in {w.name for w in wfs}
        for w in wfs:
            check_workflow(w)
        check_workflow(await client.workflows.get("quick", account_id=ACCOUNT))
        put = await client.workflows.update("async-wf", account_id=ACCOUNT, class_name="Quick", script_name="tests")
        assert put.is_deleted == 0
        version = (await client.workflows.versions.list("async-wf", account_id=ACCOUNT)).result[0]
        assert (await client.workflows.versions.get(version.id, account_id=ACCOUNT, workflow_name="async-wf")).id
        graph = await client.workflows.versions.graph(version.id, account_id=ACCOUNT, workflow_name="async-wf")
        assert graph.graph is None

        created = await client.workflows.instances.create(
            "waiter", account_id=ACCOUNT, instance_id="aw-1", params='{"a": 1}'
        )
        assert created.status in STARTED
        bulk = [i async for i in client.workflows.instances.bulk("quick", account_id=ACCOUNT, body=[{}, {}, {}])]
        assert len(bulk) == 3 and all(i.status in STARTED for i in bulk)

        async def status_of(instance_id: str, workflow: str) -> Any:
            return await client.workflows.instances.get(instance_id, account_id=ACCOUNT, workflow_name=workflow)

        for _ in range(300):
            if (await status_of("aw-1", "waiter")).status == "waiting":
                break
            await asyncio.sleep(0.05)
        step = await client.workflows.instances.step(
            "aw-1", account_id=ACCOUNT, workflow_name="waiter", name="approval-1", type="waitForEvent"
        )
        assert step.status == "waiting"
        paused = await client.workflows.instances.status.edit(
            "aw-1", account_id=ACCOUNT, workflow_name="waiter", status="pause"
        )
        assert paused.status == "paused"
        await client.workflows.instances.status.edit(
            "aw-1", account_id=ACCOUNT, workflow_name="waiter", status="resume"
        )
        sent = await client.workflows.instances.events.create(
            "approval", account_id=ACCOUNT, workflow_name="waiter", instance_id="aw-1", body=["yes"]
        )
        assert sent.instance_id == "aw-1"
        for _ in range(300):
            got = await status_of("aw-1", "waiter")
            if got.status == "complete":
                break
            await asyncio.sleep(0.05)
        assert got.output["approval"] == ["yes"] and got.version_id == created.version_id

        ids = {i.id async for i in client.workflows.instances.list("quick", account_id=ACCOUNT, per_page=7)}
        assert {i.id for i in bulk} <= ids
        terminated = await client.workflows.instances.status.edit(
            "aw-1", account_id=ACCOUNT, workflow_name="waiter", status="restart"
        )
        assert terminated.status in {"queued", "running", "waiting"}
        with pytest.raises(NotFoundError):
            await client.workflows.get("nope", account_id=ACCOUNT)
        deleted = await client.workflows.delete("async-wf", account_id=ACCOUNT)
        assert deleted.status == "ok"
