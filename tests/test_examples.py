"""Each example project under examples/ run end to end: copied to a temporary directory, a `stepstone worker`
process running it, and the CLI commands its README shows."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from stepstone.cli import cli

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def run_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Path]]:
    procs: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(name: str) -> Path:
        root = tmp_path / name
        shutil.copytree(EXAMPLES / name, root, ignore=shutil.ignore_patterns("data", ".stepstone", "public"))
        monkeypatch.chdir(root)
        monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)
        log = (tmp_path / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepstone.cli", "worker", "--poll-interval", "0.05"],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append((proc, log))
        return root

    yield start
    for proc, log in procs:
        proc.terminate()
        proc.wait(10)
        log.close()


def sc(*args: str) -> Any:
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code in (0, 1), (args, result.stdout, result.stderr)
    return json.loads(result.stdout)


def wait_until_waiting_for_event(workflow: str, instance: str, timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc: dict[str, Any] = sc("workflows", "instances", "describe", workflow, instance)
        if (doc.get("waiting_for") or {}).get("kind") == "waitForEvent":
            return doc
        assert doc["status"] not in ("complete", "errored", "terminated"), doc
        assert time.monotonic() < deadline, doc["status"]
        time.sleep(0.05)


def test_user_lifecycle(run_example: Callable[[str], Path]) -> None:
    root = run_example("user-lifecycle")
    (root / "data").mkdir()
    with sqlite3.connect(root / "data" / "app.db") as db:
        db.execute("CREATE TABLE users (id TEXT PRIMARY KEY, email TEXT, subscription_status TEXT)")
        db.execute("INSERT INTO users VALUES ('u2', 'bob@example.com', 'active')")
    ada = sc(
        "workflows",
        "trigger",
        "user-lifecycle",
        '{"userId": "u1", "email": "ada@x", "trial": "1 second"}',
        "--id",
        "ada",
        "--wait",
    )
    bob = sc(
        "workflows",
        "trigger",
        "user-lifecycle",
        '{"userId": "u2", "email": "bob@x", "trial": "1 second"}',
        "--id",
        "bob",
        "--wait",
    )
    assert ada["output"] == {"converted": False} and bob["output"] == {"converted": True}
    assert [s["type"] for s in ada["steps"]] == ["step", "sleep", "step", "step"]
    with sqlite3.connect(root / "data" / "app.db") as db:
        sent = db.execute("SELECT instance, subject FROM outbox ORDER BY rowid").fetchall()
    assert sent == [("ada", "Welcome!"), ("ada", "Your trial is ending"), ("bob", "Welcome!")]


def test_data_pipeline(run_example: Callable[[str], Path]) -> None:
    root = run_example("data-pipeline")
    doc = sc("workflows", "trigger", "data-pipeline", '{"source": "sample.csv"}', "--id", "load-1", "--wait")
    assert doc["status"] == "complete", doc
    assert doc["output"] == {"extracted": 250, "rows": 250, "batches": 3}
    extract = doc["steps"][0]
    assert extract["name"] == "extract data-1" and [a["success"] for a in extract["attempts"]] == [False, True]
    assert extract["attempts"][0]["error"]["name"] == "ConnectionError"
    with sqlite3.connect(root / "data" / "warehouse.db") as db:
        count, names = db.execute("SELECT COUNT(*), COUNT(DISTINCT name) FROM records").fetchone()
    assert count == 250 and names <= 6
    # Reload only: the load step runs again on the staged file, idempotently.
    sc("workflows", "instances", "restart", "data-pipeline", "load-1", "--from-step-name", "load to database")
    deadline = time.monotonic() + 15
    while (doc := sc("workflows", "instances", "describe", "data-pipeline", "load-1"))["status"] != "complete":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(doc["steps"][0]["attempts"]) == 2  # extract was kept, not run again
    with sqlite3.connect(root / "data" / "warehouse.db") as db:
        assert db.execute("SELECT COUNT(*) FROM records").fetchone() == (250,)
    missing = sc("workflows", "trigger", "data-pipeline", '{"source": "nope.csv"}', "--wait")
    assert missing["status"] == "errored" and "no such source" in missing["error"]["message"]


def test_approval(run_example: Callable[[str], Path]) -> None:
    root = run_example("approval")
    sc("workflows", "trigger", "approval", '{"userId": "u1"}', "--id", "req-1")
    sc("workflows", "trigger", "approval", '{"userId": "u2"}', "--id", "req-2")
    wait_until_waiting_for_event("approval", "req-1")
    wait_until_waiting_for_event("approval", "req-2")
    payload = '{"approved": true, "note": "ok"}'
    sc("workflows", "instances", "send-event", "approval", "req-1", "--type", "approval-response", "--payload", payload)
    sc(
        "workflows",
        "instances",
        "send-event",
        "approval",
        "req-2",
        "--type",
        "approval-response",
        "--payload",
        '{"approved": false}',
    )
    late = sc("workflows", "trigger", "approval", '{"userId": "u3", "timeout": "1 second"}', "--id", "req-3", "--wait")
    assert late["output"] == {"status": "auto-rejected"}
    for instance, status in (("req-1", "approved"), ("req-2", "rejected")):
        deadline = time.monotonic() + 10
        while (doc := sc("workflows", "instances", "describe", "approval", instance))["status"] != "complete":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert doc["output"]["status"] == status
    with sqlite3.connect(root / "data" / "approvals.db") as db:
        rows = db.execute("SELECT id, user_id, status, note FROM approvals ORDER BY id").fetchall()
    assert rows == [
        ("req-1", "u1", "approved", "ok"),
        ("req-2", "u2", "rejected", None),
        ("req-3", "u3", "auto-rejected", None),
    ]


def test_image_pipeline(run_example: Callable[[str], Path]) -> None:
    root = run_example("image-pipeline")
    sc("workflows", "trigger", "image-pipeline", '{"imageKey": "gradient.png"}', "--id", "img-1")
    waiting = wait_until_waiting_for_event("image-pipeline", "img-1")
    assert waiting["steps"][1]["output"]["description"] == "a 16x12 PNG image"
    text = CliRunner().invoke(
        cli, ["workflows", "instances", "describe", "image-pipeline", "img-1", "--truncate-output-limit", "40"]
    )
    assert "[...output truncated]" in text.stdout and '👀 event "approved"' in text.stdout
    sc("workflows", "instances", "send-event", "image-pipeline", "img-1", "--type", "approved")
    deadline = time.monotonic() + 10
    while (doc := sc("workflows", "instances", "describe", "image-pipeline", "img-1"))["status"] != "complete":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert doc["output"]["published"] is True
    assert (root / "bucket" / "public" / "gradient.png").read_bytes() == (root / "bucket" / "gradient.png").read_bytes()


def test_child_workflows(run_example: Callable[[str], Path]) -> None:
    run_example("child-workflows")
    lines = [{"warehouse": "berlin", "item": "mug"}, {"warehouse": "lyon", "item": "tea"}]
    lines.append({"warehouse": "berlin", "item": "pot"})
    doc = sc("workflows", "trigger", "order", json.dumps({"lines": lines}), "--id", "o-1", "--wait")
    assert doc["status"] == "complete", doc
    assert doc["output"] == {
        "summary": "2 of 2 shipments on their way",
        "shipments": [
            {"warehouse": "berlin", "tracking": "BER-o-1-2"},
            {"warehouse": "lyon", "tracking": "LYO-o-1-1"},
        ],
    }
    described = sc("workflows", "instances", "describe", "order", "o-1")
    assert [c["id"] for c in described["children"]] == ["o-1-shipment-1", "o-1-shipment-2"]
    child = sc("workflows", "instances", "describe", "shipment", "o-1-shipment-1")
    assert child["parent"] == {"workflow": "order", "id": "o-1", "status": "complete"}
    lost = sc("workflows", "trigger", "order", '{"lines": [{"warehouse": "atlantis", "item": "pearl"}]}', "--wait")
    assert lost["output"]["shipments"] == [
        {
            "warehouse": "atlantis",
            "failed": 'UnknownWarehouse: child instance "'
            + lost["output"]["shipments"][0]["failed"].split('"')[1]
            + '" of workflow "shipment" errored: no warehouse called atlantis',
        }
    ]
    assert lost["output"]["summary"] == "0 of 1 shipments on their way"


def test_saga_rollback(run_example: Callable[[str], Path]) -> None:
    run_example("saga-rollback")
    booked = sc("workflows", "trigger", "trip", '{"city": "Lisbon"}', "--id", "t-1", "--wait")
    assert booked["status"] == "complete" and booked["output"] == {"booked": ["FLI-LIS-1", "HOT-LIS-1", "CAR-LIS-1"]}
    failed = sc("workflows", "trigger", "trip", '{"city": "Lisbon", "sold_out": ["car"]}', "--id", "t-2", "--wait")
    assert failed["status"] == "errored" and failed["error"]["message"] == "no car left in Lisbon"
    doc = sc("workflows", "instances", "describe", "trip", "t-2")
    assert doc["rollback"] == {"outcome": "complete", "error": None}
    assert [(s["name"], s["output"]) for s in doc["steps"] if s["type"] == "rollback"] == [
        ("book hotel-1", "cancelled HOT-LIS-1 (book hotel: no car left in Lisbon)"),
        ("book flight-1", "cancelled FLI-LIS-1 (book flight: no car left in Lisbon)"),
    ]
    sc("workflows", "trigger", "trip", '{"city": "Porto", "pay": true}', "--id", "t-3")
    wait_until_waiting_for_event("trip", "t-3")
    result = CliRunner().invoke(cli, ["workflows", "instances", "terminate", "trip", "t-3", "--rollback"])
    assert result.exit_code == 0, result.output
    deadline = time.monotonic() + 15
    while (doc := sc("workflows", "instances", "describe", "trip", "t-3"))["status"] != "terminated":
        assert time.monotonic() < deadline, doc["status"]
        time.sleep(0.05)
    assert [s["name"] for s in doc["steps"] if s["type"] == "rollback"] == [
        "book car-1",
        "book hotel-1",
        "book flight-1",
    ]
    assert doc["rollback"] == {"outcome": "complete", "error": None}
