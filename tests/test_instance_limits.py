"""The seed's limits table as configurable limits (issue 12): queued instances per workflow, the creation rate
(per workflow, per account) and the account-wide concurrency, on SQLite and PostgreSQL, through the Python API
and over REST from a real server process."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstone import (
    AccountLimits,
    Engine,
    LimitExceededError,
    Limits,
    RateLimitedError,
    ValidationError,
    WorkflowEntrypoint,
)
from stepstone.testing.clock import FakeClock
from tests.server_process import running_server

V4 = "/client/v4/accounts/local/workflows"


class Noop(WorkflowEntrypoint):  # type: ignore[type-arg]
    async def run(self, event: Any, step: Any) -> Any:
        return None


GATE: dict[str, Any] = {}
"""The held steps' release, and how many ran at once (Held)."""


class Held(WorkflowEntrypoint):  # type: ignore[type-arg]
    """A step that holds its instance ``running`` until the test opens the gate."""

    async def run(self, event: Any, step: Any) -> Any:
        async def hold() -> str:
            GATE["now"] += 1
            GATE["max"] = max(GATE["max"], GATE["now"])
            try:
                await GATE["open"].wait()
            finally:
                GATE["now"] -= 1
            return "done"

        return await step.do("hold", {"timeout": "1 hour"}, hold)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, db_url: str) -> str:
    if request.param == "sqlite":
        return db_url
    return str(request.getfixturevalue("postgres_url"))


def test_defaults_are_cloudflares_paid_plan_where_they_cannot_throttle() -> None:
    assert Limits().max_queued_instances == 2_000_000 and Limits().creation_rate is None
    assert AccountLimits() == AccountLimits(concurrency=50_000, creation_rate=None)
    assert Limits.from_mapping({"max_queued_instances": False, "creation_rate": 100}) == Limits(
        max_queued_instances=None, creation_rate=100
    )
    with pytest.raises(ValidationError, match="limit creation_rate 0 is invalid: expected a number of instances"):
        Limits(creation_rate=0)
    with pytest.raises(ValidationError, match="limit max_queued_instances -1 is invalid"):
        Limits(max_queued_instances=-1)
    with pytest.raises(ValidationError, match="account limit concurrency 0 is invalid"):
        AccountLimits(concurrency=0)
    with pytest.raises(ValidationError, match=r"unknown account limit\(s\) \['rate'\]"):
        AccountLimits.from_mapping({"rate": 3})
    assert AccountLimits.from_mapping({"concurrency": False}).concurrency is None


async def test_the_creation_rate_of_a_workflow(url: str) -> None:
    clock = FakeClock()
    async with Engine(url, clock=clock, worker=False) as engine:
        wf = engine.register(Noop, name="noop", limits={"creation_rate": 5})
        other = engine.register(Noop, name="other")
        for i in range(5):
            await wf.create(id=f"r-{i}")
        with pytest.raises(RateLimitedError) as refused:
            await wf.create(id="r-5")
        assert refused.value.code == 971 and refused.value.retry_after == pytest.approx(0.2)
        assert str(refused.value) == (
            "More than 5 instances per second created for workflow 'noop'. Please wait and consider throttling "
            "your request speed (retry in 0.2 s)"
        )
        await other.create(id="o-1")  # another workflow has its own rate
        with pytest.raises(RateLimitedError):
            await wf.create_batch({"count": 1})
        clock.advance(0.2)
        await wf.create(id="r-5")
        with pytest.raises(LimitExceededError, match="creating 6 instances at once exceeds the creation rate of 5"):
            await wf.create_batch({"count": 6})
        clock.advance(1)
        made = await wf.create_batch({"count": 5})  # each instance of a batch counts
        assert len(made.created) == 5
        with pytest.raises(RateLimitedError):  # so does a restart
            await (await wf.get("r-0")).restart()
        assert (await wf.list_instances()).total == 11  # nothing refused was created


async def test_the_creation_rate_of_an_account(url: str) -> None:
    clock = FakeClock()
    async with Engine(url, clock=clock, worker=False, account_limits={"creation_rate": 3}) as engine:
        a = engine.register(Noop, name="a")
        b = engine.register(Noop, name="b")
        await a.create(id="a-1")
        await b.create_batch({"count": 2})
        with pytest.raises(RateLimitedError, match="for account 'local'"):
            await a.create(id="a-2")
        acme = engine.account("acme")
        await acme.put_workflow("a", class_name="Noop", script_name="", config="{}", now=clock.now())
        await acme.workflow("a").create(id="acme-1")  # another account, another budget
        clock.advance(1 / 3)
        await a.create(id="a-2")


async def test_the_maximum_of_queued_instances(url: str) -> None:
    clock = FakeClock()
    async with Engine(url, clock=clock, worker=False) as engine:
        wf = engine.register(Noop, name="noop", limits={"max_queued_instances": 3})
        await wf.create(id="q-1")
        await wf.create_batch({"count": 2})
        with pytest.raises(RateLimitedError) as refused:
            await wf.create(id="q-4")
        assert refused.value.code == 10411
        assert str(refused.value) == (
            "workflow 'noop' has 3 queued instances: creating 1 more would exceed the maximum of 3 queued "
            "instances. Please wait until queued instances start"
        )
        await (await wf.get("q-1")).terminate()  # no longer queued
        clock.advance(2)  # past the recount interval
        await wf.create(id="q-4")
        with pytest.raises(RateLimitedError):
            await wf.create_batch({"instances": [{"id": "q-5"}]})
        assert (await wf.list_instances()).total == 4


async def test_account_concurrency_holds_across_workflows_and_workers(url: str) -> None:
    GATE.update(now=0, max=0, open=asyncio.Event())
    limits = {"concurrency": 2}
    async with (
        Engine(url, poll_interval=0.05, account_limits=limits) as first,
        Engine(url, poll_interval=0.05, account_limits=limits) as second,
    ):
        for engine in (first, second):
            engine.register(Held, name="held-a")
            engine.register(Held, name="held-b")
        a, b = first.workflow("held-a"), first.workflow("held-b")
        ids = [(await (a if i % 2 else b).create(id=f"h-{i}")).id for i in range(6)]
        for _ in range(1000):
            if GATE["now"] == 2:
                break
            await asyncio.sleep(0.01)
        counts = [await first.storage.count_by_status("local", name) for name in ("held-a", "held-b")]
        assert GATE["now"] == 2 and sum(c.get("running", 0) for c in counts) == 2, counts
        assert sum(c.get("queued", 0) for c in counts) == 4, counts
        GATE["open"].set()
        for i, instance_id in enumerate(ids):
            inst = await (a if i % 2 else b).get(instance_id)
            for _ in range(2000):
                if (await inst.status()).status == "complete":
                    break
                await asyncio.sleep(0.01)
            assert (await inst.status()).status == "complete"
        assert GATE["max"] == 2


def serve_with(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch, limits: dict[str, Any]) -> Any:
    monkeypatch.setenv("STEPSTONE_TEST_ENGINE_LIMITS", json.dumps(limits))
    return running_server(tmp_path, database=url)


def test_rest_answers_429_at_the_queued_limit(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve_with(tmp_path, url, monkeypatch, {"limits": {"max_queued_instances": 2}}) as server:
        full = httpx.post(f"{server}{V4}/quick/instances/batch", json={"count": 3})  # 3 > 2 queued at once
        assert full.status_code == 429 and full.headers["retry-after"] == "1"
        assert "x-should-retry" not in full.headers  # the official SDK retries a 429
        (error,) = full.json()["errors"]
        assert error["code"] == 10411 and "maximum of 2 queued instances" in error["message"]
        assert httpx.post(f"{server}{V4}/quick/instances/batch", json={"count": 2}).status_code == 200


def test_rest_answers_429_at_the_creation_rate(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    limits = {"account_limits": {"creation_rate": 0.001}}  # one per 1000 s for the account
    with serve_with(tmp_path, url, monkeypatch, limits) as server:
        create = f"{server}{V4}/quick/instances"
        batch = httpx.post(f"{create}/batch", json={"count": 2})
        assert batch.status_code == 400 and "create them in smaller batches" in batch.json()["errors"][0]["message"]
        assert httpx.post(create, json={"instance_id": "first"}).status_code == 200
        limited = httpx.post(create, json={"instance_id": "second"})
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) > 900
        body = limited.json()
        assert body["success"] is False and body["result"] is None
        assert body["errors"][0]["code"] == 971
        assert "Please wait and consider throttling your request speed" in body["errors"][0]["message"]
        assert httpx.get(f"{create}/second").status_code == 404
        from cloudflare import Cloudflare, RateLimitError

        with Cloudflare(api_token="t", base_url=server + "/client/v4", max_retries=0) as client:
            with pytest.raises(RateLimitError) as refused:
                client.workflows.instances.create("quick", account_id="local", instance_id="third")
            assert refused.value.status_code == 429
            assert refused.value.response.json()["errors"][0]["code"] == 971


PROJECT = """
name = "limits"
main = "app.py"

[[workflows]]
name = "noop"
binding = "NOOP"
class_name = "Noop"
limits = {{ creation_rate = 2.5, max_queued_instances = false }}

[[workflows]]
name = "other"
binding = "OTHER"
class_name = "Noop"

[stepstone]
database = "sqlite:///project.db"

[stepstone.limits]
{limits}
"""


def write(tmp_path: Path, limits: str) -> Path:
    (tmp_path / "app.py").write_text(
        "from stepstone import WorkflowEntrypoint\n\n\nclass Noop(WorkflowEntrypoint):\n"
        "    async def run(self, event, step):\n        return None\n"
    )
    (tmp_path / "stepstone.toml").write_text(PROJECT.format(limits=limits))
    return tmp_path / "stepstone.toml"


def test_the_limits_from_stepstone_toml(tmp_path: Path) -> None:
    from stepstone.project import Project

    path = write(
        tmp_path,
        "max_queued_instances = 10\ncreation_rate = 50\naccount_concurrency = 7\naccount_creation_rate = false",
    )
    engine = Project.load(path).engine(worker=False)
    assert engine.account_limits == AccountLimits(concurrency=7, creation_rate=None)
    assert engine.limits.max_queued_instances == 10 and engine.limits.creation_rate == 50
    noop = engine.definitions["noop"].limits
    assert noop.creation_rate == 2.5 and noop.max_queued_instances is None
    assert engine.definitions["other"].limits.creation_rate == 50


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        (
            "creation_rate = 0",
            "stepstone.limits.creation_rate: expected a number of instances per second > 0, or false",
        ),
        ('account_concurrency = "many"', "stepstone.limits.account_concurrency: expected an integer >= 1, got 'many'"),
        ("max_queued = 3", "stepstone.limits.max_queued: expected one of the keys max_queued_instances, creation_rate"),
    ],
)
def test_a_bad_limit_names_the_file_and_the_key(tmp_path: Path, limits: str, message: str) -> None:
    from stepstone.config import ConfigError, load_config

    with pytest.raises(ConfigError) as bad:
        load_config(write(tmp_path, limits))
    assert str(bad.value).startswith(f"stepstone.toml: {message}")
