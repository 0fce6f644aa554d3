"""The S3-compatible blob store against a real S3 server (moto's, in a subprocess), on SQLite and PostgreSQL:
single and multipart uploads, read back live, on replay and over REST; delete, restart and purge remove the
objects; the sweep removes objects whose rows are gone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstone import ByteStream, Engine, WorkflowEntrypoint
from stepstone.storage.s3_client import S3Client, S3Location
from stepstone.testing import wait_for_event_wait, wait_for_status
from tests.blob_workflows import MIB, PATTERN, digest_of, expected_sha256
from tests.server_process import free_port

V4 = "/client/v4/accounts/local/workflows"
# moto[server] is in the dev extra, so the test venv runs the server; CI=true makes its absence a failure.
MOTO_PYTHON = os.environ.get("STEPSTONE_TEST_MOTO_PYTHON", sys.executable)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """An S3 server (``python -m moto.server``) on a free loopback port; skips where moto is not installed."""
    probe = subprocess.run([MOTO_PYTHON, "-c", "import moto.server"], capture_output=True)
    if probe.returncode != 0:
        message = f"no moto server ({MOTO_PYTHON} cannot import moto.server): pip install 'moto[server]'"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    proc = subprocess.Popen(
        [MOTO_PYTHON, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(endpoint, timeout=1)
            break
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.05)
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'blobs.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def bucket(s3_endpoint: str, tmp_path: Path) -> AsyncIterator[tuple[str, S3Client]]:
    """A fresh bucket: its blob-store URL and a client to look inside."""
    name = f"b{tmp_path.name.replace('_', '-').lower()[-40:]}".strip("-")
    blob_url = f"s3://test:secret@{name}/steps?endpoint={s3_endpoint}&region=us-east-1"
    client = S3Client(S3Location.from_url(blob_url))
    await client._send("PUT", "")  # CreateBucket
    yield blob_url, client
    await client.close()


async def objects(client: S3Client) -> list[str]:
    return [key async for key in client.keys("steps/")]


class Outputs(WorkflowEntrypoint):
    """A 20 MiB stream (a multipart upload of 8 MiB parts) and 2 MiB of bytes (one PutObject), then an event
    wait so the instance replays."""

    async def run(self, event: Any, step: Any) -> Any:
        async def produce() -> AsyncIterator[bytes]:
            for _ in range(20):
                yield PATTERN

        big = await step.do("big", produce)
        small = await step.do("small", lambda: PATTERN * 2)
        await step.wait_for_event("go", "go", timeout="1 hour")
        return {"big": await digest_of(big), "small": await digest_of(small), "type": type(big).__name__}


async def test_outputs_stream_into_the_bucket_and_back(url: str, tmp_path: Path, bucket: tuple[str, S3Client]) -> None:
    blob_url, client = bucket
    async with Engine(url, blob_store=blob_url) as engine:
        wf = engine.register(Outputs, name="outputs")
        inst = await wf.create(id="o")
        await wait_for_event_wait(inst, "go")
        assert len(await objects(client)) == 2
        await inst.send_event("go", {})
        output = (await wait_for_status(inst, "complete")).output
        assert output == {
            "big": [20 * MIB, expected_sha256(20)],
            "small": [2 * MIB, expected_sha256(2)],
            "type": "ByteStream",
        }
        assert not (tmp_path / "blobs.db.blobs").exists()  # nothing beside the database

        from stepstone.server import create_app

        transport = httpx.ASGITransport(app=create_app(engine, loopback_only=True))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8787") as api:
            got = await api.get(f"{V4}/outputs/instances/o/step", params={"name": "big-1", "type": "step"})
            assert got.headers["content-type"] == "application/octet-stream"
            assert len(got.content) == 20 * MIB and got.content[: len(PATTERN)] == PATTERN

        await inst.delete()
        await engine.storage.blobs.wait_collected()
        assert await objects(client) == []


class Restartable(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        out = await step.do("big", lambda: PATTERN * 6)
        await step.wait_for_event("go", "go", timeout="1 hour")
        return out.size if isinstance(out, ByteStream) else None


async def test_restart_purge_and_sweep_remove_objects(url: str, bucket: tuple[str, S3Client]) -> None:
    blob_url, client = bucket
    async with Engine(url, blob_store=blob_url) as engine:
        wf = engine.register(Restartable, name="restartable")
        inst = await wf.create(id="r")
        await wait_for_event_wait(inst, "go")
        (first,) = await objects(client)
        await inst.restart()
        await wait_for_event_wait(inst, "go")
        await engine.storage.blobs.wait_collected()
        (second,) = await objects(client)
        assert second != first
        await inst.send_event("go", {})
        assert (await wait_for_status(inst, "complete")).output == 6 * MIB

        await client.put("steps/999999/0123456789abcdef", b"stray")  # an object whose row is gone
        assert await engine.storage.blobs.sweep(now=time.time()) == 1
        assert await objects(client) == [second]

        assert await engine.storage.purge_expired(now=time.time() + 365 * 86400) == 1
        await engine.storage.blobs.wait_collected()
        assert await objects(client) == []


def test_the_blob_store_setting_is_checked_and_hides_the_secret(tmp_path: Path) -> None:
    from stepstone.config import ConfigError, load_config

    config = tmp_path / "stepstone.toml"
    (tmp_path / "entry.py").write_text("")
    good = "s3://key:s3cr3t@bucket/steps?endpoint=https://example.com&region=auto"
    config.write_text(f'name = "p"\nmain = "entry.py"\n[stepstone]\nblob_store = "{good}"\n')
    assert load_config(config, environ={}).settings.blob_store == good
    over = "s3://k2:other@b2?endpoint=http://127.0.0.1:9000"
    assert load_config(config, environ={"STEPSTONE_BLOB_STORE": over}).settings.blob_store == over
    config.write_text('name = "p"\nmain = "entry.py"\n[stepstone]\nblob_store = "s3://key:s3cr3t@bucket/steps"\n')
    with pytest.raises(
        ConfigError, match=re.escape("stepstone.blob_store: blob store 's3://key:***@bucket/steps' is invalid")
    ):
        load_config(config, environ={})
    try:
        load_config(config, environ={})
    except ConfigError as exc:
        assert "s3cr3t" not in str(exc)


async def test_a_project_engine_uses_the_configured_bucket(tmp_path: Path, bucket: tuple[str, S3Client]) -> None:
    from stepstone.project import Project

    blob_url, client = bucket
    (tmp_path / "entry.py").write_text(
        "from stepstone import WorkflowEntrypoint\n"
        "class Big(WorkflowEntrypoint):\n"
        "    async def run(self, event, step):\n"
        "        out = await step.do('big', lambda: bytes(3 << 20))\n"
        "        return out.size\n"
    )
    (tmp_path / "stepstone.toml").write_text(
        'name = "p"\nmain = "entry.py"\n[[workflows]]\nname = "big"\nbinding = "BIG"\nclass_name = "Big"\n'
        f'[stepstone]\ndatabase = "sqlite:///p.db"\nblob_store = "{blob_url}"\n'
    )
    project = Project.load(tmp_path / "stepstone.toml")
    async with project.engine(worker=True) as engine:
        inst = await engine.workflow("big").create(id="b")
        assert (await wait_for_status(inst, "complete")).output == 3 * MIB
    assert len(await objects(client)) == 1
