"""The Python Worker examples (``examples/worker-*``, ``wrangler.toml`` projects) under a real ``stepstone dev``,
driven over real HTTP as their READMEs show."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_cli_dev import free_port, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def dev_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., str]]:
    procs: list[tuple[subprocess.Popen[bytes], Any]] = []
    monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)

    def start(name: str, *args: str) -> str:
        root = tmp_path / name
        shutil.copytree(EXAMPLES / name, root, ignore=shutil.ignore_patterns(".stepstone", "__pycache__"))
        port = free_port()
        log = (tmp_path / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepstone.cli", "dev", "--port", str(port), *args],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append((proc, log))
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(base + "/health"), 60, f"{name}'s API")
        wait_for(lambda: "ready:" in (tmp_path / f"{name}.log").read_text(), 60, f"{name}'s worker")
        return base

    yield start
    for proc, log in procs:
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=30).status_code < 500
    except httpx.HTTPError:
        return False


def test_worker_trigger_creates_an_instance_and_sends_it_the_webhook(dev_example: Callable[..., str]) -> None:
    base = dev_example("worker-trigger")
    made = httpx.post(base + "/", json={"userId": "u1", "amount": 25}, timeout=30)
    assert made.status_code == 201, made.text
    instance_id = made.json()["id"]

    def status() -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(base + "/", params={"instanceId": instance_id}, timeout=30).json()
        return answer

    wait_for(lambda: status()["status"] == "waiting", 60, "the instance to wait for the webhook")
    sent = httpx.post(base + "/webhook", params={"instanceId": instance_id}, json={"paid": True, "charge": "ch_1"})
    assert sent.status_code == 200 and "status" in sent.json()
    done = wait_for(lambda: (s := status())["status"] == "complete" and s, 60, "the payment to complete")
    assert done["output"] == {"user": "u1", "amount": 25, "currency": "EUR", "paid": True, "charge": "ch_1"}

    refused = httpx.post(base + "/", json={"userId": "u2", "amount": 0}, timeout=30).json()["id"]
    failed = wait_for(
        lambda: (
            (s := httpx.get(base + "/", params={"instanceId": refused}, timeout=30).json())["status"] == "errored" and s
        ),
        60,
        "the refused payment to fail",
    )
    assert failed["error"]["message"] == "the amount must be positive"
    listed = httpx.get(base + "/client/v4/accounts/local/workflows", timeout=30).json()["result"]
    assert [(w["name"], w["script_name"]) for w in listed] == [("payment-workflow", "payments")]
    assert httpx.get(base + "/nowhere", timeout=30).status_code == 404


def test_worker_cron_starts_a_cleanup_at_each_firing(dev_example: Callable[..., str]) -> None:
    base = dev_example("worker-cron", "--test-scheduled")
    ran = httpx.get(base + "/__scheduled", params={"cron": "0 3 * * *", "time": "1786000000000"}, timeout=30)
    assert (ran.status_code, ran.text) == (200, "Ran scheduled event")
    v4 = base + "/client/v4/accounts/local/workflows/cleanup-workflow/instances/cleanup-1786000000000"
    done = wait_for(
        lambda: (
            (r := httpx.get(v4, timeout=30)).status_code == 200 and r.json()["result"]["status"] == "complete" and r
        ),
        60,
        "the cleanup instance to complete",
    )
    assert done.json()["result"]["output"] == {"deleted": 3, "before": "2026-07-07T07:06:40+00:00"}
    assert httpx.get(base + "/__scheduled", params={"time": "soon"}, timeout=30).status_code == 400


def test_worker_queue_consumer_creates_an_instance_per_message(dev_example: Callable[..., str]) -> None:
    base = dev_example("worker-queue")
    sent = httpx.post(base + "/jobs", json=[{"name": "resize"}, {"name": "thumbnail"}, {"name": "crop"}], timeout=30)
    assert (sent.status_code, sent.json()) == (202, {"queued": 3})
    v4 = base + "/client/v4/accounts/local/workflows/job-workflow/instances"

    def finished() -> list[Any] | None:
        rows = httpx.get(v4, params={"status": "complete"}, timeout=30).json()["result"]
        return rows if len(rows) == 3 else None

    rows = wait_for(finished, 90, "an instance per message")
    assert all(r["id"].startswith("job-") for r in rows)
    outputs = sorted(httpx.get(f"{v4}/{r['id']}", timeout=30).json()["result"]["output"]["job"] for r in rows)
    assert outputs == ["crop", "resize", "thumbnail"]
