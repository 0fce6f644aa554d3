"""``create_batch``'s object form (Cloudflare changelog 2026-10-08) on SQLite and PostgreSQL: through the Python
API, over REST from a real server process, and from the CLI (``trigger --count`` / ``--params-file``); the
deprecated array form keeps its old result."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from stepstone import BatchResult, Engine, LimitExceededError, ValidationError, WorkflowEntrypoint
from stepstone.cli import cli
from tests.server_process import running_server

V4 = "/client/v4/accounts/local/workflows"


class Echo(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("echo", lambda: event.payload)


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, db_url: str) -> str:
    """The database of one backend."""
    if request.param == "sqlite":
        return db_url
    return str(request.getfixturevalue("postgres_url"))


async def wait_complete(wf: Any, ids: list[str]) -> list[Any]:
    outputs = []
    for instance_id in ids:
        inst = await wf.get(instance_id)
        for _ in range(600):
            status = await inst.status()
            if status.status == "complete":
                outputs.append(status.output)
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"{instance_id} is {status.status}")
    return outputs


async def test_count_makes_n_instances_with_generated_ids(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(Echo, name="echo")
        result = await wf.create_batch(
            {"count": 5, "params": {"report": "daily"}, "retention": {"successRetention": "1 day"}}
        )
        assert isinstance(result, BatchResult) and result.errors == [] and result["errors"] == []
        ids = [i.id for i in result["created"]]
        assert len(set(ids)) == 5 and all(uuid.UUID(i).version == 4 for i in ids)
        assert await wait_complete(wf, ids) == [{"report": "daily"}] * 5
        record = await result.created[0].record()
        assert record.success_retention_ms == 86_400_000 and record.trigger_source == "binding"


async def test_instances_report_existing_and_repeated_ids_by_position(url: str) -> None:
    async with Engine(url, poll_interval=0.05) as engine:
        wf = engine.register(Echo, name="echo")
        await wf.create(id="order-1", params={"old": True})
        result = await wf.create_batch(
            {
                "instances": [
                    {"id": "order-1", "params": {"orderId": 1}},
                    {"id": "order-2", "params": {"orderId": 2}},
                    {"params": {"orderId": "generated"}},
                    {"id": "order-2", "params": {"orderId": "again"}},
                    {"id": "order-3", "params": {"orderId": 3}},
                ]
            }
        )
        created = [i.id for i in result.created]
        assert created[0] == "order-2" and created[2] == "order-3" and len(created) == 3
        assert result.errors == [
            {"index": 0, "id": "order-1", "code": 10405, "message": "workflows.api.error.instance.already_exists"},
            {"index": 3, "id": "order-2", "code": 10415, "message": "workflows.api.error.instance.duplicate_in_batch"},
        ]
        outputs = await wait_complete(wf, ["order-1", "order-2", "order-3"])
        assert outputs == [{"old": True}, {"orderId": 2}, {"orderId": 3}]  # the existing one is untouched


async def test_a_bad_batch_creates_nothing_and_names_what_is_wrong(url: str) -> None:
    async with Engine(url, worker=False) as engine:
        wf = engine.register(Echo, name="echo")
        bad: list[tuple[Any, type[Exception], str]] = [
            ({"count": 0}, ValidationError, "count must be a positive integer, got 0"),
            ({"count": True}, ValidationError, "count must be a positive integer, got True"),
            ({"count": "3"}, ValidationError, "count must be a positive integer, got '3'"),
            ({"count": 101}, LimitExceededError, "batch of 101 instances exceeds the limit of 100"),
            ({"instances": []}, ValidationError, "at least 1 instance"),
            ({"instances": [{}] * 101}, LimitExceededError, "limit of 100"),
            ({"instances": {"id": "x"}}, ValidationError, "instances must be a list"),
            (
                {"instances": [{"id": "a"}], "count": 2},
                ValidationError,
                r"\['count'\] cannot be given with 'instances'",
            ),
            ({"count": 2, "id": "x"}, ValidationError, r"unknown option\(s\) \['id'\]"),
            ({"params": {}}, ValidationError, r"got keys \['params'\]"),
            ("batch", ValidationError, "got str"),
            (
                {"instances": [{"id": "ok-1"}, {"id": "ok-2"}, {"id": "bad id"}]},
                ValidationError,
                "instance 2: .*bad id",
            ),
            ({"instances": [{"id": "ok-1"}, {"ident": "x"}]}, ValidationError, r"instance 1: unknown instance option"),
            ({"count": 2, "params": {"s": {1}}}, ValidationError, "instance 0: .*set"),
        ]
        for batch, error, message in bad:
            with pytest.raises(error, match=message):
                await wf.create_batch(batch)
        assert (await wf.list_instances()).total == 0


async def test_the_array_form_keeps_its_result_and_warns(url: str) -> None:
    async with Engine(url, worker=False) as engine:
        wf = engine.register(Echo, name="echo")
        await wf.create(id="a")
        with pytest.deprecated_call(match=r"array form\) is deprecated, as on Cloudflare"):
            made = await wf.create_batch([{"id": "a"}, {"id": "b"}, {"id": "b"}, {"id": "c"}])
        assert [i.id for i in made] == ["b", "c"]  # ids in use (or repeated) are skipped and left out


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def server(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A real server process (engine, worker, REST API) on the backend's database; cwd has no project."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with running_server(tmp_path, database=url) as base:
        yield base


def _result(answer: httpx.Response) -> Any:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True, body
    return body["result"]


def _wait_total(base: str, workflow: str, status: str, total: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = httpx.get(f"{base}{V4}/{workflow}/instances", params={"status": status, "per_page": 1}).json()
        if info["result_info"]["total_count"] == total:
            return
        time.sleep(0.1)
    raise AssertionError(f"{workflow} never had {total} {status} instances")


def test_rest_object_and_array_forms(server: str) -> None:
    batch = f"{server}{V4}/quick/instances/batch"
    made = _result(
        httpx.post(batch, json={"count": 3, "params": {"n": 1}, "instance_retention": {"success_retention": "1 day"}})
    )
    assert set(made) == {"created", "errors"} and made["errors"] == [] and len(made["created"]) == 3
    assert all(c["workflow_id"] == "quick" and c["version_id"] for c in made["created"])
    listed = _result(
        httpx.post(
            batch,
            json={
                "instances": [
                    {"instance_id": "r-1", "params": {"n": 1}},
                    {"instance_id": "r-1", "params": {"n": 2}},
                    {"instance_id": "r-2", "params": json.dumps({"n": 3})},
                ]
            },
        )
    )
    assert [c["id"] for c in listed["created"]] == ["r-1", "r-2"]
    assert listed["errors"] == [
        {"index": 1, "id": "r-1", "code": 10415, "message": "workflows.api.error.instance.duplicate_in_batch"}
    ]
    again = _result(httpx.post(batch, json={"instances": [{"instance_id": "r-2"}, {"instance_id": "r-3"}]}))
    assert [c["id"] for c in again["created"]] == ["r-3"]
    assert again["errors"] == [
        {"index": 0, "id": "r-2", "code": 10405, "message": "workflows.api.error.instance.already_exists"}
    ]
    # The array form answers as before: the created instances, ids in use left out.
    legacy = _result(httpx.post(batch, json=[{"instance_id": "r-3"}, {"instance_id": "r-4", "params": {"n": 4}}]))
    assert [c["id"] for c in legacy] == ["r-4"]
    _wait_total(server, "quick", "complete", 7)
    doc = _result(httpx.get(f"{server}{V4}/quick/instances/r-2"))
    assert doc["output"] == {"echo": {"n": 3}}
    # Bad batches: a 400 naming the field, nothing created.
    for body, text in [
        ({"count": 0}, "count must be a positive integer"),
        ({"count": 101}, "limit of 100"),
        ({"count": 2, "instance_id": "x"}, "instance_id"),
        ({"instances": "x"}, "instances must be a JSON array"),
        ({"instances": [{"instance_id": "ok"}, {"instance_id": "bad id"}]}, "instance 1"),
        ({"instances": [], "count": 1}, "count"),
        ({"params": {}}, "count"),
        ("x", "JSON array"),
    ]:
        answer = httpx.post(batch, json=body)
        assert answer.status_code == 400, (body, answer.text)
        assert text in answer.json()["errors"][0]["message"], (body, answer.text)
    assert httpx.get(f"{server}{V4}/quick/instances/ok").status_code == 404


def test_cli_trigger_count_and_params_file(server: str, url: str, tmp_path: Path) -> None:
    code, out, err = _cli("workflows", "trigger", "quick", '{"k": "v"}', "--count", "250", "--api", server)
    assert code == 0, (out, err)
    assert "250 workflow instances queued successfully" in out
    lines = tmp_path / "params.jsonl"
    lines.write_text('{"n": 1}\n\n{"n": 2}\n"text"\n[3]\n')
    code, out, err = _cli("workflows", "trigger", "quick", "--params-file", str(lines), "--database", url, "--json")
    assert code == 0, (out, err)
    result = json.loads(out)
    assert result["errors"] == [] and len(result["created"]) == 4
    _wait_total(server, "quick", "complete", 254)
    outputs = sorted(
        json.dumps(_result(httpx.get(f"{server}{V4}/quick/instances/{c['id']}"))["output"]) for c in result["created"]
    )
    assert outputs == sorted(json.dumps({"echo": p}) for p in ({"n": 1}, {"n": 2}, "text", [3]))
    # Bad uses: a usage error naming the option, nothing created.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"n": 1}\n{oops\n')
    for args, text in [
        (("--params-file", str(bad)), "line 2 is not JSON"),
        (("--count", "2", "--params-file", str(lines)), "cannot be used together"),
        (("--count", "2", "--wait"), "--wait"),
        (("--count", "2", "--id", "x"), "--id"),
        (("{}", "--params-file", str(lines)), "PARAMS and --params-file"),
        (("--count", "0"), "--count"),
    ]:
        code, out, err = _cli("workflows", "trigger", "quick", *args, "--api", server)
        assert code == 2, (args, out, err)
        assert text in err, (args, err)
    _wait_total(server, "quick", "complete", 254)
