"""A 100 MiB step output through a real server process, on SQLite, PostgreSQL and an S3 bucket (with SQLite):
streamed into the blob store
and read back on the replay and over ``GET .../step`` with the process's peak memory (``VmHWM``) growing by far
less than the output; deleting the instance deletes the blob."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.blob_workflows import MIB, expected_sha256
from tests.server_process import PIDS, running_server
from tests.test_blobs_s3 import bucket, s3_endpoint  # noqa: F401 - fixtures

V4 = "/client/v4/accounts/local/workflows"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "sqlite+s3"])
def url(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "sqlite+s3":  # the bytes in an S3 bucket (moto's server), the rows in SQLite
        blob_url, _ = request.getfixturevalue("bucket")
        monkeypatch.setenv("STEPSTONE_TEST_BLOB_STORE", blob_url)
        return f"sqlite:///{tmp_path / 'blobs.db'}"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'blobs.db'}"
    return str(request.getfixturevalue("postgres_url"))


def memory_kib(pid: int) -> dict[str, int]:
    """``VmRSS`` (now) and ``VmHWM`` (peak) of a process, in KiB, from ``/proc/<pid>/status``."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def wait_status(api: httpx.Client, instance_id: str, status: str, *, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        doc = api.get(f"{V4}/bigout/instances/{instance_id}").json()["result"]
        if doc["status"] == status:
            return dict(doc)
        assert doc["status"] not in ("errored", "terminated"), doc
        assert time.monotonic() < deadline, f"{instance_id} still {doc['status']}"
        time.sleep(0.05)


def download(api: httpx.Client, instance_id: str) -> tuple[int, str, str]:
    """Size, sha256 and content type of the streamed step output, read a chunk at a time."""
    import hashlib

    digest, n = hashlib.sha256(), 0
    params = {"name": "produce-1", "type": "step"}
    with api.stream("GET", f"{V4}/bigout/instances/{instance_id}/step", params=params) as response:
        assert response.status_code == 200, response.read()
        for chunk in response.iter_bytes():
            digest.update(chunk)
            n += len(chunk)
        return n, digest.hexdigest(), response.headers["content-type"]


def run_one(api: httpx.Client, instance_id: str, mib: int) -> dict[str, Any]:
    created = api.post(f"{V4}/bigout/instances", json={"instance_id": instance_id, "params": {"mib": mib}})
    assert created.status_code == 200, created.text
    waiting = wait_status(api, instance_id, "waiting")  # the output is recorded; the instance hibernates
    assert waiting["steps"][0]["output"] == {"type": "binary", "size": mib * MIB}
    assert api.post(f"{V4}/bigout/instances/{instance_id}/events/go", json={}).status_code == 200
    return wait_status(api, instance_id, "complete")["output"]


def test_a_100_mib_output_streams_through_the_worker_without_its_memory(url: str, tmp_path: Path) -> None:
    with running_server(tmp_path, database=url) as base, httpx.Client(base_url=base, timeout=60) as api:
        pid = PIDS[base]
        # warm up every code path (the step, the replay, the download) with a small output first
        assert run_one(api, "warm", 2)["read"] == 2 * MIB
        assert download(api, "warm")[0] == 2 * MIB
        before = memory_kib(pid)

        output = run_one(api, "big", 100)
        size, sha, content_type = download(api, "big")

        after = memory_kib(pid)
        grew_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
        print(
            f"worker VmRSS {before['VmRSS']} -> {after['VmRSS']} KiB, peak VmHWM {before['VmHWM']} -> "
            f"{after['VmHWM']} KiB (+{grew_mib:.1f} MiB) for a 100 MiB output"
        )
        # the output, its replay and its download all passed through the process: its peak grew by far less
        assert grew_mib < 40
        expected = expected_sha256(100)
        assert output == {"type": "ByteStream", "size": 100 * MIB, "read": 100 * MIB, "sha256": expected}
        assert (size, sha, content_type) == (100 * MIB, expected, "application/octet-stream")

        # the JSON form of the step still answers for a small step; a missing step is still a 404
        missing = api.get(f"{V4}/bigout/instances/big/step", params={"name": "nope-1", "type": "step"})
        assert missing.status_code == 404

        deleted = api.post(f"{V4}/bigout/instances/batch/delete", json={"instances": ["big", "warm"]})
        assert deleted.status_code == 200, deleted.text
    # (the server's close waits for the background removal of the deleted blobs' objects)
    assert stored_blobs(url, tmp_path) == (0, 0)


def stored_blobs(url: str, tmp_path: Path) -> tuple[int, int]:
    """How many blobs (rows) and how many bytes (files, or chunk rows) the database still holds."""
    if url.startswith("sqlite"):
        import sqlite3

        files = [p for p in (tmp_path / "blobs.db.blobs").rglob("*") if p.is_file()]
        with sqlite3.connect(tmp_path / "blobs.db") as conn:
            rows = conn.execute("SELECT count(*) FROM blobs").fetchone()[0]
        return int(rows), sum(p.stat().st_size for p in files)
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM blobs), (SELECT coalesce(sum(length(data)), 0) FROM blob_chunks)"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])
