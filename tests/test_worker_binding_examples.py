"""The binding examples (``examples/worker-images``, ``worker-users``: ``wrangler.toml`` projects) under a real
``stepstone dev``, driven over real HTTP as their READMEs show."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from stepstone.cli import cli
from tests.test_cli_dev import free_port, wait_for

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture
def dev_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[str, Path]]]:
    procs: list[tuple[subprocess.Popen[bytes], Any]] = []
    monkeypatch.delenv("STEPSTONE_DATABASE_URL", raising=False)

    def start(name: str, edit: Callable[[Path], None] | None = None) -> tuple[str, Path]:
        root = tmp_path / name
        shutil.copytree(EXAMPLES / name, root, ignore=shutil.ignore_patterns(".stepstone", "__pycache__"))
        if edit is not None:
            edit(root)
        port = free_port()
        log = (tmp_path / f"{name}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepstone.cli", "dev", "--port", str(port)],
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        procs.append((proc, log))
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(base + "/"), 60, f"{name}'s Worker")
        return base, root

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


def test_worker_images_stores_describes_and_publishes_to_r2(dev_example: Callable[..., tuple[str, Path]]) -> None:
    base, root = dev_example("worker-images")
    png = (root / "gradient.png").read_bytes()
    stored = httpx.put(base + "/images/gradient.png", content=png, headers={"content-type": "image/png"}, timeout=30)
    assert stored.status_code == 201 and stored.json()["size"] == len(png)
    assert (root / ".stepstone" / "r2" / "images" / "gradient.png").read_bytes() == png  # the bucket's file
    instance_id = httpx.post(base + "/process", json={"imageKey": "gradient.png"}, timeout=30).json()["id"]

    def status() -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(base + "/status", params={"instanceId": instance_id}, timeout=30).json()
        return answer

    wait_for(lambda: status()["status"] == "waiting", 60, "the approval wait")
    assert httpx.get(base + "/public/gradient.png", timeout=30).status_code == 404
    assert httpx.post(base + "/approve", params={"instanceId": instance_id}, timeout=30).status_code == 200
    done = wait_for(lambda: (s := status())["status"] == "complete" and s, 60, "publication")
    assert done["output"]["published"] == "public/gradient.png"
    assert done["output"]["description"].endswith("PNG image")  # from the [ai] implementation
    published = httpx.get(base + "/public/gradient.png", timeout=30)
    assert published.status_code == 200 and published.content == png
    assert (
        published.headers["content-type"] == "image/png"
        and published.headers["etag"].strip('"') == done["output"]["etag"]
    )
    assert (root / ".stepstone" / "r2" / "images" / "public" / "gradient.png").read_bytes() == png
    missing = httpx.post(base + "/process", json={"imageKey": "nope.png"}, timeout=30).json()["id"]
    failed = wait_for(
        lambda: (
            (s := httpx.get(base + "/status", params={"instanceId": missing}, timeout=30).json())["status"] == "errored"
            and s
        ),
        60,
        "the missing image to fail",
    )
    assert "no image nope.png in the bucket" in str(failed["error"])


def test_worker_users_reads_d1_and_kv(
    dev_example: Callable[..., tuple[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def prepare(root: Path) -> None:
        config = root / "wrangler.toml"
        config.write_text(config.read_text().replace('TRIAL = "7 days"', 'TRIAL = "15 seconds"'))
        monkeypatch.chdir(root)
        made = CliRunner().invoke(cli, ["d1", "execute", "users-db", "--file", "schema.sql"])
        assert made.exit_code == 0, made.output

    base, root = dev_example("worker-users", prepare)
    assert httpx.put(base + "/flags", content='{"discounts": true}', timeout=30).json() == {"stored": True}
    for user in ("ada", "bob"):
        made = httpx.post(base + "/users", json={"id": user, "email": f"{user}@example.com"}, timeout=30)
        assert made.status_code == 201, made.text
    assert httpx.post(base + "/users/ada/subscribe", timeout=30).json() == {"changes": 1}
    assert httpx.get(base + "/users/ada", timeout=30).json()["status"] in ("queued", "running", "waiting")  # in trial

    def output(user: str) -> dict[str, Any]:
        s = httpx.get(base + f"/users/{user}", timeout=30).json()
        return s["output"] if s["status"] == "complete" else {}

    assert wait_for(lambda: output("ada"), 60, "ada's lifecycle") == {
        "converted": True,
        "follow_up": "Thanks for subscribing!",
    }
    assert wait_for(lambda: output("bob"), 60, "bob's lifecycle") == {
        "converted": False,
        "follow_up": "Your trial has ended: 20% off today",
    }
    outbox = httpx.get(base + "/outbox", timeout=30).json()
    assert sorted((m["email"], m["subject"]) for m in outbox) == [
        ("ada@example.com", "Thanks for subscribing!"),
        ("ada@example.com", "Welcome!"),
        ("bob@example.com", "Welcome!"),
        ("bob@example.com", "Your trial has ended: 20% off today"),
    ]
    with sqlite3.connect(root / ".stepstone" / "d1" / "users-db.sqlite3") as conn:  # D1 is a real SQLite file
        assert conn.execute("SELECT id, subscription_status FROM users ORDER BY id").fetchall() == [
            ("ada", "active"),
            ("bob", "trial"),
        ]
