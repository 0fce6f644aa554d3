"""The seed document's own forms, which users copy: an infinite ``retries.limit``, the options dict of
``wait_for_event``, a ``WorkflowInstance`` returned from a step, and the seed's REST calls (``POST .../instances``
with ``id``, ``GET .../instances/{id}/status``, ``POST .../instances/{id}/events`` with ``{type, payload}``), on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from stepstone import Engine, ValidationError, WorkflowEntrypoint
from stepstone.retry import RetryConfig, StepConfig, resolve_step_config
from stepstone.server import create_app
from stepstone.testing import wait_for_event_wait, wait_for_status

V4 = "/client/v4/accounts/local/workflows"
TRIES: dict[str, int] = {}


@pytest.fixture(autouse=True)
def _fresh_tries() -> None:
    TRIES.clear()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.mark.parametrize("limit", [math.inf, float("inf"), "Infinity"])
def test_an_infinite_retry_limit_is_accepted_and_shown_as_infinity(limit: object) -> None:
    cfg = resolve_step_config({"retries": {"limit": limit, "delay": 0}}, step_name="s", max_retries=3)
    assert cfg.retries.limit == math.inf
    assert cfg.to_dict()["retries"] == {"limit": "Infinity", "delay": 0, "backoff": "exponential"}
    assert StepConfig.from_dict(cfg.to_dict()) == cfg
    assert RetryConfig(limit=math.inf).limit == math.inf


@pytest.mark.parametrize("limit", ["infinity", "inf", -math.inf, math.nan, "5"])
def test_other_limits_that_are_not_numbers_are_refused(limit: object) -> None:
    with pytest.raises(
        ValidationError, match=r'retries.limit .* is invalid: expected an integer >= 0, or float\("inf"\)'
    ):
        resolve_step_config({"retries": {"limit": limit, "delay": 0}}, step_name="s")
    with pytest.raises(ValidationError, match="expected an integer >= 0 or infinity"):
        RetryConfig(limit=-math.inf)


class Forever(WorkflowEntrypoint):
    """A step that fails four times and retries without end; then the seed's wait_for_event dict form."""

    async def run(self, event: Any, step: Any) -> Any:
        key = event.instance_id

        def flaky() -> int:
            TRIES[key] = TRIES.get(key, 0) + 1
            if TRIES[key] < 5:
                raise RuntimeError(f"attempt {TRIES[key]} fails")
            return TRIES[key]

        limit = event.payload.get("limit") or float("inf")
        tries = await step.do("flaky", {"retries": {"limit": limit, "delay": 1, "backoff": "constant"}}, flaky)
        approval = await step.wait_for_event("approval", {"type": "approval", "timeout": "1 hour"})
        try:
            await step.wait_for_event("nothing", {"type": "never", "timeout": "1 second"})
            timed_out = False
        except Exception as exc:
            timed_out = type(exc).__name__ == "WorkflowTimeoutError"
        return {"tries": tries, "approved": approval.payload["ok"], "timed_out": timed_out}


async def test_infinite_retries_and_the_wait_for_event_options_dict(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(Forever, name="forever")
        for n, limit in enumerate([None, "Infinity"]):  # None: float("inf") (params cannot hold it)
            inst = await wf.create(id=f"f{n}-{url[:6]}", params={"limit": limit})
            await wait_for_event_wait(inst, "approval")
            await inst.send_event({"type": "approval", "payload": {"ok": True}})
            status = await wait_for_status(inst, "complete")
            assert status.output == {"tries": 5, "approved": True, "timed_out": True}
            doc = await inst.describe()
            (flaky,) = [s for s in doc["steps"] if s.get("name") == "flaky-1"]
            assert flaky["config"]["retries"]["limit"] == "Infinity"
            assert len(flaky["attempts"]) == 5


class BadWait(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        options = event.payload["options"]
        try:
            await step.wait_for_event("w", options, **event.payload.get("kw", {}))
        except ValidationError as exc:
            return str(exc)
        return "no error"


@pytest.mark.parametrize(
    ("options", "kw", "message"),
    [
        ({"event": "approved", "timeout": "1 hour"}, {}, "unknown option 'event' (the event type is 'type')"),
        ({"type": "a", "timeout": True}, {}, "timeout True is invalid: expected a duration"),
        ({"type": "a"}, {"timeout": "1 hour"}, "give the options dict or type=/timeout=, not both"),
        ({"timeout": "1 hour"}, {}, "an event type is required"),
        ({"type": "bad type!"}, {}, "event type"),
    ],
)
async def test_a_bad_options_dict_is_a_clear_error(db_url: str, options: Any, kw: Any, message: str) -> None:
    async with Engine(db_url, poll_interval=0.05) as engine:
        wf = engine.register(BadWait, name="badwait")
        inst = await wf.create(params={"options": options, "kw": kw})
        status = await wait_for_status(inst, "complete")
        assert message in status.output


class Parent(WorkflowEntrypoint):
    """The seed's "from another workflow" example: a step creates the child and returns its handle."""

    async def run(self, event: Any, step: Any) -> Any:
        result = await step.do("initial work", lambda: {"fileKey": "output.pdf"})

        async def trigger() -> Any:
            return await self.env.CHILD_WORKFLOW.create(
                {"id": f"child-{event.instance_id}", "params": {"fileKey": result["fileKey"]}}
            )

        child = await step.do("trigger child workflow", trigger)
        status = await step.do("child status", lambda: self.env.CHILD_WORKFLOW.get(child["id"]))
        return {"child": child, "handle": status}


class Child(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("work", lambda: event.payload["fileKey"].upper())


async def test_a_workflow_instance_returned_from_a_step_is_stored_as_its_id(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        engine.register(Child, name="child", binding="CHILD_WORKFLOW")
        parent = engine.register(Parent, name="parent")
        inst = await parent.create(id="p1")
        status = await wait_for_status(inst, "complete")
        assert status.output == {"child": {"id": "child-p1"}, "handle": {"id": "child-p1"}}
        child = await engine.workflow("child").get("child-p1")
        assert (await wait_for_status(child, "complete")).output == "OUTPUT.PDF"


@pytest.fixture
async def api(url: str) -> AsyncIterator[httpx.AsyncClient]:
    engine = Engine(url, poll_interval=0.05)
    engine.register(Forever, name="forever")
    async with engine:
        transport = httpx.ASGITransport(app=create_app(engine, loopback_only=True))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8787") as client:
            yield client


def _result(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    return body["result"]


def _error(response: httpx.Response, status: int = 400) -> str:
    assert response.status_code == status, response.text
    return str(response.json()["errors"][0]["message"])


async def _status_until(api: httpx.AsyncClient, path: str, wanted: str) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        status: dict[str, Any] = _result(await api.get(f"{path}/status"))
        if status["status"] == wanted or asyncio.get_running_loop().time() > deadline:
            return status
        await asyncio.sleep(0.025)


async def test_the_seed_rest_calls(api: httpx.AsyncClient) -> None:
    created = _result(await api.post(f"{V4}/forever/instances", json={"id": "custom-instance-id", "params": {}}))
    assert created["id"] == "custom-instance-id"
    one = f"{V4}/forever/instances/custom-instance-id"
    status = await _status_until(api, one, "waiting")
    assert status == {"status": "waiting", "output": None, "error": None}
    sent = _result(await api.post(f"{one}/events", json={"type": "approval", "payload": {"ok": True}}))
    assert sent["instanceId"] == "custom-instance-id"
    status = await _status_until(api, one, "complete")
    assert status == {"status": "complete", "output": {"tries": 5, "approved": True, "timed_out": True}, "error": None}
    # instance_id keeps working, and naming two different ids is refused
    same = {"instance_id": "x1", "id": "x1"}
    assert _result(await api.post(f"{V4}/forever/instances", json=same))["id"] == "x1"
    assert "id and instance_id name different instances" in _error(
        await api.post(f"{V4}/forever/instances", json={"instance_id": "x2", "id": "x3"})
    )
    assert "unknown field(s) ['event']" in _error(await api.post(f"{one}/events", json={"event": "approval"}))
    assert 'the event needs a "type"' in _error(await api.post(f"{one}/events", json={"payload": 1}))
    assert "must be a JSON object" in _error(await api.post(f"{one}/events", json=[1]))
    assert "event type" in _error(await api.post(f"{one}/events", json={"type": "bad type!"}))
    _error(await api.get(f"{V4}/forever/instances/nope/status"), 404)
