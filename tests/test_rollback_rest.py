"""Saga rollbacks over REST, against a real server process on SQLite and PostgreSQL: the official ``cloudflare``
SDK reads the handlers' ``rollback`` steps and the instance's ``rollback`` outcome, and terminates with
``rollback=True``; ``stepstone workflows instances terminate --rollback`` and ``describe`` over ``--api``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from cloudflare import BadRequestError, Cloudflare

from stepstone.cli import cli
from tests.server_process import running_server

ACCOUNT = "local"
V4 = "/client/v4/accounts/local/workflows"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_url"))
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def server(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with running_server(tmp_path, database=url) as base:
        yield base


@pytest.fixture
def client(server: str) -> Iterator[Cloudflare]:
    with Cloudflare(api_token="any-token", base_url=server + "/client/v4") as c:
        yield c


def _wait(client: Cloudflare, instance_id: str, status: str) -> Any:
    deadline = time.monotonic() + 30
    while True:
        got = client.workflows.instances.get(instance_id, account_id=ACCOUNT, workflow_name="saga")
        if got.status == status:
            return got
        assert time.monotonic() < deadline, f"{instance_id} stayed {got.status}, wanted {status}"
        time.sleep(0.05)


def _waiting_for_go(server: str, instance_id: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        doc = httpx.get(f"{server}{V4}/saga/instances/{instance_id}").json()["result"]
        if doc["status"] == "waiting" and "go" in (doc.get("waiting_for") or {}).get("types", []):
            return
        assert time.monotonic() < deadline, f"{instance_id} is {doc['status']}, not waiting for go"
        time.sleep(0.05)


def test_the_sdk_reads_rollback_steps_and_the_outcome(client: Cloudflare) -> None:
    client.workflows.instances.create("saga", account_id=ACCOUNT, instance_id="s1", params={"fail": True})
    got = _wait(client, "s1", "errored")
    assert got.error is not None and got.error.message == "no courier"
    assert got.rollback is not None and got.rollback.outcome == "complete" and got.rollback.error is None
    undo = [s for s in got.steps if s.type == "rollback"]
    assert [(s.name, s.success, s.output) for s in undo] == [
        ("charge-1", True, "undid charged"),
        ("reserve-1", True, "undid reserved"),
    ]
    assert [a.success for a in undo[0].attempts] == [True]

    client.workflows.instances.create(
        "saga", account_id=ACCOUNT, instance_id="s2", params={"fail": True, "fail_undo": ["charged"]}
    )
    failed = _wait(client, "s2", "errored")
    assert failed.error is not None and failed.error.name == "ExceptionGroup"
    assert failed.rollback is not None and failed.rollback.outcome == "failed"
    assert failed.rollback.error is not None
    assert (failed.rollback.error.name, failed.rollback.error.message) == ("RuntimeError", "cannot undo charged")
    assert [s.name for s in failed.steps if s.type == "rollback"] == ["charge-1"]  # the chain stopped there


def test_the_sdk_terminates_with_rollback(client: Cloudflare, server: str) -> None:
    client.workflows.instances.create("saga", account_id=ACCOUNT, instance_id="t1", params={})
    _waiting_for_go(server, "t1")
    with pytest.raises(BadRequestError):
        client.workflows.instances.status.edit(
            "t1", account_id=ACCOUNT, workflow_name="saga", status="pause", rollback=True
        )
    answer = client.workflows.instances.status.edit(
        "t1", account_id=ACCOUNT, workflow_name="saga", status="terminate", rollback=True
    )
    assert answer.status in ("rollingBack", "terminated")
    got = _wait(client, "t1", "terminated")
    assert got.rollback is not None and got.rollback.outcome == "complete"
    assert [s.name for s in got.steps if s.type == "rollback"] == ["charge-1", "reserve-1"]
    assert got.steps[-1].type == "termination"
    # a finished instance cannot be terminated again, with or without rollback
    again = httpx.patch(f"{server}{V4}/saga/instances/t1/status", json={"status": "terminate", "rollback": True})
    assert 400 <= again.status_code < 500, again.text


def test_the_cli_terminates_with_rollback_and_describes_it(server: str) -> None:
    created = httpx.post(f"{server}{V4}/saga/instances", json={"instance_id": "c1", "params": {}})
    assert created.status_code == 200, created.text
    _waiting_for_go(server, "c1")
    api = ["--api", server + "/client/v4"]
    runner = CliRunner()
    done = runner.invoke(cli, ["workflows", "instances", "terminate", "saga", "c1", "--rollback", *api])
    assert done.exit_code == 0, done.output
    assert '🥷 The instance "c1" from saga was terminated successfully' in done.output
    deadline = time.monotonic() + 30
    while httpx.get(f"{server}{V4}/saga/instances/c1").json()["result"]["status"] != "terminated":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    described = runner.invoke(cli, ["workflows", "instances", "describe", "saga", "c1", *api])
    assert described.exit_code == 0, described.output
    assert "Rollback:" in described.output and "✅ Complete" in described.output
    assert described.output.count("↩️ Rollback") == 2
    assert '"undid charged"' in described.output
