"""``stepstone serve``: API-only processes in front of one database, tokens from the environment, refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.server_process import free_port


@contextmanager
def serve_process(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stepstone.cli", "serve", "--port", str(port), *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(base + "/health", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None, proc.communicate()[0]
                time.sleep(0.05)
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def test_two_servers_share_one_database_and_stop_on_sigterm(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    env = {"STEPSTONE_API_TOKEN": "sekrit"}
    auth = {"authorization": "Bearer sekrit"}
    with (
        serve_process(["--database", db], env, tmp_path) as (a, base_a),
        serve_process(["--database", db], env, tmp_path) as (_, base_b),
    ):
        path = "/client/v4/accounts/local/workflows/shared"
        assert httpx.get(base_a + path).status_code == 401
        put = httpx.put(base_a + path, json={"class_name": "Shared", "script_name": "s"}, headers=auth)
        assert put.status_code == 200, put.text
        created = httpx.post(base_a + path + "/instances", json={"instance_id": "one"}, headers=auth)
        assert created.json()["result"]["status"] == "queued"  # no worker here: it waits for one
        got = httpx.get(base_b + path + "/instances/one", headers=auth)
        assert got.status_code == 200 and got.json()["result"]["status"] == "queued"
        a.send_signal(signal.SIGTERM)
        assert a.wait(10) == 0
        output = a.communicate()[0]
        assert "stepstone API on http://127.0.0.1" in output and "sekrit" not in output
        assert httpx.get(base_b + "/health").status_code == 200


def test_refuses_a_public_address_without_tokens(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STEPSTONE_API_TOKEN"}
    done = subprocess.run(
        [sys.executable, "-m", "stepstone.cli", "serve", "--host", "0.0.0.0", "--database", "sqlite:///t.db"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "refusing to serve the API beyond loopback with no API tokens" in done.stderr
