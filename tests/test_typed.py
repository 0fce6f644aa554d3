"""Typed params and results (issue 12): ``WorkflowEntrypoint[Params]`` with a pydantic model, a dataclass or a
TypedDict validates params at ``create()`` / ``create_batch()`` and hands ``run()`` the typed object; a step
annotated with a return type gets that type back, live and replayed alike. On SQLite and PostgreSQL, through the
Python API and over REST from a real server process; plain dicts keep working unchanged."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

import httpx
import pydantic
import pytest

from stepstone import Engine, ValidationError, WorkflowEntrypoint, WorkflowEvent
from stepstone.typed import convert, is_typed, return_type, to_plain
from tests.server_process import running_server

V4 = "/client/v4/accounts/local/workflows"


class SignupModel(pydantic.BaseModel):
    email: str
    age: int
    plan: str = "free"
    joined: datetime | None = None


@dataclasses.dataclass(frozen=True)
class Address:
    city: str
    zip: str


@dataclasses.dataclass(frozen=True)
class SignupData:
    email: str
    age: int
    address: Address
    tags: list[str] = dataclasses.field(default_factory=list)


class SignupDict(TypedDict):
    email: str
    age: int
    referrer: NotRequired[str]


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclasses.dataclass(frozen=True)
class Order:
    id: int
    total: float
    color: Color
    placed: datetime
    note: str | None = None


class Quote(pydantic.BaseModel):
    sku: str
    price: float


class ModelWorkflow(WorkflowEntrypoint[SignupModel]):
    async def run(self, event: WorkflowEvent[SignupModel], step: Any) -> Any:
        p = event.payload
        return {"type": type(p).__name__, "email": p.email, "age": p.age, "plan": p.plan, "joined": p.joined}


class DataclassWorkflow(WorkflowEntrypoint[SignupData]):
    async def run(self, event: WorkflowEvent[SignupData], step: Any) -> Any:
        p = event.payload
        return {"type": type(p).__name__, "city": p.address.city, "address": type(p.address).__name__, "tags": p.tags}


class DictWorkflow(WorkflowEntrypoint[SignupDict]):
    async def run(self, event: WorkflowEvent[SignupDict], step: Any) -> Any:
        return {"type": type(event.payload).__name__, "payload": dict(event.payload)}


class Plain(WorkflowEntrypoint):  # type: ignore[type-arg]
    async def run(self, event: Any, step: Any) -> Any:
        return {"type": type(event.payload).__name__, "payload": event.payload}


def load_order() -> Order:
    return Order(7, 12.5, Color.BLUE, datetime(2026, 12, 4, 12, 0, tzinfo=UTC))


def load_quotes() -> list[Quote]:
    return [Quote(sku="a", price=1.0), Quote(sku="b", price=2)]


def no_quote() -> Quote | None:
    return None


def describe(value: Any) -> Any:
    if isinstance(value, list):
        return [describe(v) for v in value]
    if value is None:
        return None
    return [type(value).__name__, repr(value)]


RUNS: list[Any] = []
"""What each run of TypedSteps saw: the live run's values, then the replayed run's."""


class TypedSteps(WorkflowEntrypoint):  # type: ignore[type-arg]
    """Typed step results before a hibernating sleep: seen live on the first run, replayed on the second."""

    async def run(self, event: Any, step: Any) -> Any:
        order = await step.do("order", load_order)
        quotes = await step.do("quotes", load_quotes)
        none = await step.do("none", no_quote)

        @step.do("decorated")
        async def decorated() -> Address:
            return Address("Paris", "75001")

        address = await decorated()
        RUNS.append([describe(order), describe(quotes), describe(none), describe(address), order.color.value])
        await step.sleep("nap", 10)  # hibernates (inprocess_wait_s=0): the next run replays the steps above
        return len(RUNS)


class Mismatch(WorkflowEntrypoint):  # type: ignore[type-arg]
    async def run(self, event: Any, step: Any) -> Any:
        calls = {"n": 0}

        def bad() -> Order:
            calls["n"] += 1
            return {"id": "seven", "total": 1.0, "color": "green"}  # type: ignore[return-value]

        try:
            await step.do("bad", {"retries": {"limit": 3, "delay": 10}}, bad)
        except ValidationError as exc:
            return {"calls": calls["n"], "message": str(exc), "errors": list(exc.errors)}
        return None


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, db_url: str) -> str:
    if request.param == "sqlite":
        return db_url
    return str(request.getfixturevalue("postgres_url"))


async def wait_output(wf: Any, instance_id: str) -> Any:
    inst = await wf.get(instance_id)
    for _ in range(1000):
        status = await inst.status()
        if status.status in ("complete", "errored"):
            assert status.status == "complete", status.error
            return status.output
        await asyncio.sleep(0.01)
    raise AssertionError(f"{instance_id} is {status.status}")


async def test_pydantic_params_are_validated_and_typed(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(ModelWorkflow, name="signup")
        with pytest.raises(ValidationError) as bad:
            await wf.create(id="s-bad", params={"email": "a@b.c", "age": "old"})
        assert "params of instance 's-bad' do not match SignupModel" in str(bad.value)
        assert "age: input should be a valid integer" in str(bad.value)
        assert [e["field"] for e in bad.value.errors] == ["params.age"]
        with pytest.raises(ValidationError, match="email: field required"):
            await wf.create(id="s-bad", params={"age": 3})
        with pytest.raises(ValidationError) as missing:  # params omitted: {} is checked too
            await wf.create(id="s-none")
        assert {e["field"] for e in missing.value.errors} == {"params.email", "params.age"}
        assert await wf.list_instances() is not None and (await wf.list_instances()).total == 0

        await wf.create(id="s-1", params={"email": "a@b.c", "age": 30})
        when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
        await wf.create(id="s-2", params=SignupModel(email="x@y.z", age=2, plan="pro", joined=when))
        out1 = await wait_output(wf, "s-1")
        assert out1 == {"type": "SignupModel", "email": "a@b.c", "age": 30, "plan": "free", "joined": None}
        out2 = await wait_output(wf, "s-2")
        assert out2["type"] == "SignupModel" and out2["plan"] == "pro" and out2["joined"] == when
        record = await (await wf.get("s-1")).record()
        assert record.params == '{"email":"a@b.c","age":30,"plan":"free","joined":null}'  # stored plain


async def test_dataclass_and_typeddict_params(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        dc = engine.register(DataclassWorkflow, name="dc")
        td = engine.register(DictWorkflow, name="td")
        with pytest.raises(ValidationError) as bad:
            await dc.create(id="d-bad", params={"email": 1, "age": True, "address": {"city": "X"}, "extra": 1})
        fields = {e["field"]: e["message"] for e in bad.value.errors}
        assert fields == {
            "params.extra": "unexpected field (allowed: email, age, address, tags)",
            "params.email": "expected a string, got int 1",
            "params.age": "expected an integer, got bool True",
            "params.address.zip": "field required",
        }
        await dc.create(id="d-1", params={"email": "e", "age": 1, "address": {"city": "Lyon", "zip": "69001"}})
        await dc.create(id="d-2", params=SignupData("e", 2, Address("Nice", "06000"), ["vip"]))
        assert await wait_output(dc, "d-1") == {"type": "SignupData", "city": "Lyon", "address": "Address", "tags": []}
        assert (await wait_output(dc, "d-2"))["tags"] == ["vip"]

        with pytest.raises(ValidationError, match=r"referrer: expected a string, got int 5"):
            await td.create(id="t-bad", params={"email": "e", "age": 1, "referrer": 5})
        with pytest.raises(ValidationError, match=r"age: field required"):
            await td.create(id="t-bad", params={"email": "e"})
        await td.create(id="t-1", params={"email": "e", "age": 1})
        assert await wait_output(td, "t-1") == {"type": "dict", "payload": {"email": "e", "age": 1}}


async def test_create_batch_validates_every_entry_before_creating_any(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(ModelWorkflow, name="signup")
        batch = {"instances": [{"id": "b-1", "params": {"email": "a", "age": 1}}, {"id": "b-2", "params": {}}]}
        with pytest.raises(ValidationError) as bad:
            await wf.create_batch(batch)
        assert str(bad.value).startswith("create_batch instance 1: params of instance 'b-2' do not match")
        assert {e["field"] for e in bad.value.errors} == {"instances[1].params.email", "instances[1].params.age"}
        assert (await wf.list_instances()).total == 0
        with pytest.raises(ValidationError, match=r"create_batch instance 0: .*age: field required"):
            await wf.create_batch({"count": 3, "params": {"email": "a"}})
        made = await wf.create_batch({"count": 2, "params": {"email": "a", "age": 5}})
        outs = [await wait_output(wf, i.id) for i in made.created]
        assert [o["type"] for o in outs] == ["SignupModel", "SignupModel"]


async def test_plain_workflows_are_unchanged(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(Plain, name="plain")
        await wf.create(id="p-1", params={"anything": ["goes", 1]})
        await wf.create(id="p-2", params=[1, 2])
        assert await wait_output(wf, "p-1") == {"type": "dict", "payload": {"anything": ["goes", 1]}}
        assert await wait_output(wf, "p-2") == {"type": "list", "payload": [1, 2]}


async def test_typed_step_results_are_the_same_live_and_replayed(url: str) -> None:
    RUNS.clear()
    async with Engine(url, poll_interval=0.05, inprocess_wait_s=0) as engine:
        wf = engine.register(TypedSteps, name="typed-steps")
        await wf.create(id="r-1")
        assert await wait_output(wf, "r-1") == 2
        live, replayed = RUNS
        assert live == replayed
        order, quotes, none, address, color = live
        assert order == ["Order", repr(load_order())]
        assert quotes == [["Quote", repr(Quote(sku="a", price=1.0))], ["Quote", repr(Quote(sku="b", price=2.0))]]
        assert none is None and address == ["Address", repr(Address("Paris", "75001"))] and color == "blue"
        stored = {s.name: s.result for s in await (await wf.get("r-1")).history() if s.kind == "do"}
        assert stored["order"] == (
            '{"id":7,"total":12.5,"color":"blue","placed":{"$datetime":"2026-12-04T12:00:00+00:00"},"note":null}'
        )
        assert stored["quotes"] == '[{"sku":"a","price":1.0},{"sku":"b","price":2.0}]'


async def test_a_result_that_does_not_match_its_type_fails_the_step_once(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(Mismatch, name="mismatch")
        await wf.create(id="m-1")
        out = await wait_output(wf, "m-1")
        assert out["calls"] == 1  # not retried: the same code returns the same shape
        assert out["message"].startswith('step "bad-1" result do not match Order: ')
        assert {e["field"] for e in out["errors"]} == {"id", "color", "placed"}


class InProcess(WorkflowEntrypoint):  # type: ignore[type-arg]
    async def run(self, event: Any, step: Any) -> Any:
        order = await step.do("order", load_order)
        return [type(order).__name__, order.color.value]


async def test_a_typed_result_crosses_from_a_step_process(db_url: str) -> None:
    async with Engine(db_url, poll_interval=0.05) as engine:
        wf = engine.register(InProcess, name="in-process", isolation="process")
        await wf.create(id="i-1")
        assert await wait_output(wf, "i-1") == ["Order", "blue"]


def test_the_checker_without_a_database() -> None:
    assert convert(tuple[int, str], [1, "a"], what="v") == (1, "a")
    assert convert(dict[str, Color], {"a": "red"}, what="v") == {"a": Color.RED}
    assert convert(Literal["a", "b"], "b", what="v") == "b"
    assert convert(list[Address] | None, None, what="v") is None
    assert convert(float, 3, what="v") == 3.0 and isinstance(convert(float, 3, what="v"), float)
    assert convert(datetime, "2026-01-01T00:00:00+00:00", what="v") == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValidationError) as bad:
        convert(list[Address], [{"city": "a", "zip": "b"}, {"city": 1}], what="stops")
    assert str(bad.value) == (
        "stops do not match list[tests.test_typed.Address]: [1].city: expected a string, got int 1; "
        "[1].zip: field required"
    )
    with pytest.raises(ValidationError, match="expected one of"):
        convert(Literal["a"], "z", what="v")
    with pytest.raises(ValidationError, match=r"\(value\): expected an object \(Address\), got str"):
        convert(Address, "Paris", what="v")
    assert to_plain(load_order()) == {
        "id": 7,
        "total": 12.5,
        "color": "blue",
        "placed": datetime(2026, 12, 4, 12, 0, tzinfo=UTC),
        "note": None,
    }
    assert is_typed(list[Order]) and is_typed(SignupDict) and is_typed(Quote | None) and not is_typed(dict)
    assert return_type(load_order) is Order and return_type(lambda: 1) is None

    def plain() -> dict[str, int]:
        return {}

    assert return_type(plain) is None


@pytest.fixture
def server(tmp_path: Path, url: str) -> Iterator[str]:
    with running_server(tmp_path, database=url) as base:
        yield base


def test_rest_answers_400_with_the_field_errors(server: str) -> None:
    create = f"{server}{V4}/signup/instances"
    bad = httpx.post(create, json={"instance_id": "x-1", "params": {"email": 5}})
    assert bad.status_code == 400 and bad.headers["x-should-retry"] == "false"
    body = bad.json()
    assert body["success"] is False and body["result"] is None
    first, *fields = body["errors"]
    assert first["code"] == 10002 and "params of instance 'x-1' do not match SignupParams" in first["message"]
    assert sorted((f["source"]["pointer"], f["code"]) for f in fields) == [
        ("/params/age", 10002),
        ("/params/email", 10002),
    ]
    assert any(f["message"].startswith("params.age: field required") for f in fields)
    batch = httpx.post(f"{create}/batch", json={"count": 2, "params": {"email": "a"}})
    assert batch.status_code == 400
    assert [f["source"]["pointer"] for f in batch.json()["errors"][1:]] == ["/instances/0/params/age"]

    made = httpx.post(create, json={"instance_id": "x-2", "params": {"email": "a@b.c", "age": 4}})
    assert made.status_code == 200, made.text
    for _ in range(1000):
        doc = httpx.get(f"{create}/x-2").json()["result"]
        if doc["status"] == "complete":
            break
        time.sleep(0.02)
    assert doc["output"] == {"type": "SignupParams", "email": "a@b.c", "plan": "free"}
    assert doc["params"] == {"email": "a@b.c", "age": 4, "plan": "free"}


def test_the_official_sdk_gets_a_bad_request_with_the_fields(server: str) -> None:
    from cloudflare import BadRequestError, Cloudflare

    with Cloudflare(api_token="any-token", base_url=server + "/client/v4") as client:
        with pytest.raises(BadRequestError) as bad:
            client.workflows.instances.create(
                "signup", account_id="local", instance_id="sdk-1", params=json.dumps({"email": "a", "age": "x"})
            )
        errors = bad.value.response.json()["errors"]
        assert errors[1]["source"] == {"pointer": "/params/age"} and errors[1]["code"] == 10002
        made = client.workflows.instances.create(
            "signup", account_id="local", instance_id="sdk-2", params=json.dumps({"email": "a", "age": 1})
        )
        assert made.id == "sdk-2"
