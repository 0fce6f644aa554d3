"""Step outputs beyond 1 MiB (Cloudflare's ReadableStream step results), on SQLite and PostgreSQL: bytes over
the result limit, async iterators and binary files are streamed into the blob store and come back as a
``ByteStream``, live and on replay; the instance's state limit counts them; deleting, purging or restarting the
instance removes them; JSON results keep their 1 MiB limit."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstone import ByteStream, Engine, Limits, WorkflowEntrypoint
from stepstone.testing import get_error, wait_for_event_wait, wait_for_status
from tests.blob_workflows import MIB, PATTERN, digest_of, expected_sha256
from tests.test_blobs_http import stored_blobs

V4 = "/client/v4/accounts/local/workflows"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'blobs.db'}"
    return str(request.getfixturevalue("postgres_url"))


SEEN: dict[str, Any] = {}


class Kinds(WorkflowEntrypoint):
    """Every kind of streamed output, each read back live and (after the event wait) on the replay."""

    async def run(self, event: Any, step: Any) -> Any:
        path = event.payload["file"]

        async def chunks() -> AsyncIterator[Any]:
            yield b"ab"
            yield bytearray(b"cd")
            yield b""
            yield memoryview(b"ef")

        outputs = {
            "iterator": await step.do("iterator", chunks),
            "bytes": await step.do("bytes", lambda: PATTERN * 2),
            "file": await step.do("file", lambda: open(path, "rb")),  # noqa: SIM115 - the engine reads and closes it
            "small": await step.do("small", lambda: b"tiny"),
        }
        outputs["copy"] = await step.do("copy", lambda: outputs["bytes"])  # a ByteStream returned again
        phase = "replay" if "live" in SEEN else "live"
        SEEN[phase] = {k: (type(v).__name__, v if isinstance(v, bytes) else await v.read()) for k, v in outputs.items()}
        await step.wait_for_event("go", "go", timeout="1 hour")
        return {k: getattr(v, "size", None) for k, v in outputs.items()}


async def test_streamed_outputs_come_back_as_byte_streams_live_and_on_replay(url: str, tmp_path: Path) -> None:
    SEEN.clear()
    source = tmp_path / "source.bin"
    source.write_bytes(PATTERN * 3 + b"tail")
    async with Engine(url) as engine:
        wf = engine.register(Kinds, name="kinds")
        inst = await wf.create(id="k", params={"file": str(source)})
        await wait_for_event_wait(inst, "go")
        await inst.send_event("go", {})
        status = await wait_for_status(inst, "complete")
        assert status.output == {"iterator": 6, "bytes": 2 * MIB, "file": 3 * MIB + 4, "small": None, "copy": 2 * MIB}
        expected = {
            "iterator": ("ByteStream", b"abcdef"),
            "bytes": ("ByteStream", PATTERN * 2),
            "file": ("ByteStream", PATTERN * 3 + b"tail"),
            "small": ("bytes", b"tiny"),  # within the 1 MiB result limit: stored inline, as before
            "copy": ("ByteStream", PATTERN * 2),
        }
        assert SEEN["live"] == expected and SEEN["replay"] == expected
        details = await inst.describe()
        outputs = {s["name"]: s["output"] for s in details["steps"]}
        assert outputs["bytes-1"] == {"type": "binary", "size": 2 * MIB}
        assert outputs["small-1"] == "dGlueQ=="
        assert stored_blobs(url, tmp_path) == (4, 6 + 2 * MIB + 3 * MIB + 4 + 2 * MIB)

        from stepstone.server import create_app

        transport = httpx.ASGITransport(app=create_app(engine, loopback_only=True))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8787") as api:
            got = await api.get(f"{V4}/kinds/instances/k/step", params={"name": "file-1", "type": "step"})
            assert got.headers["content-type"] == "application/octet-stream"
            assert got.headers["content-length"] == str(3 * MIB + 4) and got.content == PATTERN * 3 + b"tail"
            attempt = await api.get(
                f"{V4}/kinds/instances/k/step", params={"name": "iterator-1", "type": "step", "attempt": 1}
            )
            assert attempt.content == b"abcdef"
            small = await api.get(f"{V4}/kinds/instances/k/step", params={"name": "small-1", "type": "step"})
            assert small.json()["result"]["output"] == "dGlueQ=="

        await inst.delete()
        assert stored_blobs(url, tmp_path) == (0, 0)


class Limited(WorkflowEntrypoint):
    """Two streamed outputs of ``params["mib"]`` MiB each, then a JSON result."""

    async def run(self, event: Any, step: Any) -> Any:
        mib = event.payload["mib"]

        async def produce() -> AsyncIterator[bytes]:
            for _ in range(mib):
                yield PATTERN

        one = await step.do("one", produce)
        two = await step.do("two", produce)
        return {"one": one.size, "two": two.size}


async def test_the_instance_state_limit_counts_streamed_outputs(url: str, tmp_path: Path) -> None:
    async with Engine(url) as engine:
        wf = engine.register(Limited, name="limited", limits={"instance_state_bytes": 3 * MIB})
        ok = await wf.create(id="ok", params={"mib": 1})
        assert (await wait_for_status(ok, "complete")).output == {"one": MIB, "two": MIB}
        over = await wf.create(id="over", params={"mib": 2})
        await wait_for_status(over, "errored")
        error = await get_error(over)
        assert error.name == "WorkflowFatalError"
        assert error.message.startswith('The instance has exceeded the 3MiB storage limit: step "two-1" output')
        assert "is over the limit of 3145728 bytes (3 MiB)" in error.message
        steps = {s.name: s for s in await over.history()}
        assert steps["two"].status == "error" and len(steps["two"].attempts) == 1  # fatal: not retried
        # the refused output left nothing behind: the blobs of ok (2) and of over's first step
        assert stored_blobs(url, tmp_path) == (3, 4 * MIB)


class Refused(WorkflowEntrypoint):
    """Outputs that are refused: ``params["kind"]`` picks one."""

    async def run(self, event: Any, step: Any) -> Any:
        kind = event.payload["kind"]

        async def strings() -> AsyncIterator[Any]:
            yield b"ok"
            yield "not bytes"

        sources = {
            "json": lambda: {"text": "x" * (MIB + 1)},
            "chunk type": strings,
            "text file": lambda: io.StringIO("text"),
        }
        return await step.do("out", sources[kind])


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("json", 'step "out-1" result is 1048588 bytes, over the limit of 1048576 bytes (1 MiB)'),
        ("chunk type", 'step "out-1" output is a stream with an unsupported chunk type: str (only bytes, bytearray'),
        ("text file", "step \"out-1\" output is a text file: return a file opened in binary mode ('rb')"),
    ],
)
async def test_refused_outputs_say_why(url: str, tmp_path: Path, kind: str, message: str) -> None:
    async with Engine(url) as engine:
        wf = engine.register(Refused, name="refused")
        inst = await wf.create(id="r", params={"kind": kind})
        await wait_for_status(inst, "errored")
        assert message in (await get_error(inst)).message
        assert stored_blobs(url, tmp_path)[0] == 0


class Restartable(WorkflowEntrypoint):
    """A streamed output, then an event wait (so a test can restart or purge it)."""

    async def run(self, event: Any, step: Any) -> Any:
        out = await step.do("big", lambda: PATTERN * 2)
        await step.wait_for_event("go", "go", timeout="1 hour")
        return await digest_of(out)


async def test_restart_and_purge_remove_the_blobs(url: str, tmp_path: Path) -> None:
    async with Engine(url) as engine:
        wf = engine.register(Restartable, name="restartable")
        inst = await wf.create(id="r")
        await wait_for_event_wait(inst, "go")
        first = stored_blobs(url, tmp_path)
        assert first == (1, 2 * MIB)
        await inst.restart()  # the history goes, and the blob with it; the re-run writes a new one
        await wait_for_event_wait(inst, "go")
        await inst.send_event("go", {})
        assert (await wait_for_status(inst, "complete")).output == [2 * MIB, expected_sha256(2)]
        if url.startswith("sqlite"):  # the restart unlinks the old file in the background: wait for that
            await engine.storage.blobs.wait_collected()  # type: ignore[attr-defined]
        assert stored_blobs(url, tmp_path) == (1, 2 * MIB)
        assert await engine.storage.purge_expired(now=time.time() + 365 * 86400) == 1
        assert stored_blobs(url, tmp_path) == (0, 0)


async def test_byte_stream_of_a_deleted_instance_cannot_be_read(url: str, tmp_path: Path) -> None:
    async with Engine(url) as engine:
        wf = engine.register(Restartable, name="restartable")
        inst = await wf.create(id="gone")
        await wait_for_event_wait(inst, "go")
        (rec,) = [s for s in await inst.history() if s.name == "big"]
        from stepstone import codec
        from stepstone.errors import StorageError

        stream = await inst.output_stream(codec.decode(rec.result or ""))
        assert isinstance(stream, ByteStream) and stream.size == 2 * MIB
        await inst.delete()
        with pytest.raises(StorageError, match="cannot be read"):
            await stream.read()


def test_limits_default_and_config() -> None:
    assert Limits().instance_state_bytes == 1 << 30
    assert Limits.from_mapping({"instance_state_bytes": 100_000_000}).instance_state_bytes == 100_000_000


def make_big() -> bytes:
    """A module-level sync step (process isolation pickles the callable by reference)."""
    return PATTERN * 3


class InProcess(WorkflowEntrypoint):
    """A sync step run in a child process (isolation="process") returning bytes over the limit."""

    async def run(self, event: Any, step: Any) -> Any:
        out = await step.do("big", make_big)
        return await digest_of(out)


async def test_a_process_isolated_step_streams_its_big_bytes_too(url: str, tmp_path: Path) -> None:
    async with Engine(url) as engine:
        wf = engine.register(InProcess, name="inprocess", isolation="process")
        inst = await wf.create(id="p")
        assert (await wait_for_status(inst, "complete", timeout=60)).output == [3 * MIB, expected_sha256(3)]
        assert stored_blobs(url, tmp_path) == (1, 3 * MIB)


async def test_a_blob_gone_from_the_store_is_a_404_not_a_cut_response(url: str, tmp_path: Path) -> None:
    async with Engine(url) as engine:
        wf = engine.register(Restartable, name="restartable")
        inst = await wf.create(id="r")
        await wait_for_event_wait(inst, "go")
        if url.startswith("sqlite"):
            for p in (tmp_path / "blobs.db.blobs").rglob("*"):
                if p.is_file():
                    p.unlink()
        else:
            import psycopg

            with psycopg.connect(url) as conn:
                conn.execute("DELETE FROM blobs")
        from stepstone.server import create_app

        transport = httpx.ASGITransport(app=create_app(engine, loopback_only=True))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8787") as api:
            got = await api.get(f"{V4}/restartable/instances/r/step", params={"name": "big-1", "type": "step"})
        assert got.status_code == 404
        assert "the output of step 'big-1' is no longer stored" in got.json()["errors"][0]["message"]


TRIES: dict[str, int] = {}


class Flaky(WorkflowEntrypoint):
    """A stream that fails mid-way on its first attempt (``params["how"]``: raise, or hang past the timeout)."""

    async def run(self, event: Any, step: Any) -> Any:
        how = event.payload["how"]

        async def produce() -> AsyncIterator[bytes]:
            TRIES[how] = TRIES.get(how, 0) + 1
            yield PATTERN
            if TRIES[how] == 1:
                if how == "raise":
                    raise ConnectionError("upstream went away")
                await asyncio.sleep(3600)
            yield PATTERN

        config = {"retries": {"limit": 2, "delay": 10, "backoff": "constant"}, "timeout": 300}
        return await digest_of(await step.do("out", config, produce))


@pytest.mark.parametrize(
    ("how", "error"), [("raise", "upstream went away"), ("hang", "Execution timed out after 300ms")]
)
async def test_a_stream_that_fails_mid_way_is_retried_and_leaves_nothing(
    url: str, tmp_path: Path, how: str, error: str
) -> None:
    TRIES.clear()
    async with Engine(url) as engine:
        wf = engine.register(Flaky, name="flaky")
        inst = await wf.create(id=how, params={"how": how})
        assert (await wait_for_status(inst, "complete")).output == [2 * MIB, expected_sha256(2)]
        (rec,) = [s for s in await inst.history() if s.name == "out"]
        assert [a.success for a in rec.attempts] == [False, True]
        assert rec.attempts[0].error_message == error
        # the failed attempt's blob row went with the next commit, before the retry's own writes
        assert stored_blobs(url, tmp_path) == (1, 2 * MIB)


class Concurrent(WorkflowEntrypoint):
    """Two streams of 2 MiB at once under a 3 MiB state limit: the budget is shared, so one of them is refused."""

    async def run(self, event: Any, step: Any) -> Any:
        async def produce() -> AsyncIterator[bytes]:
            for _ in range(2):
                yield PATTERN
                await asyncio.sleep(0.01)

        outs = await asyncio.gather(step.do("a", produce), step.do("b", produce))
        return [o.size for o in outs]


async def test_concurrent_streams_share_the_state_budget(url: str, tmp_path: Path) -> None:
    async with Engine(url) as engine:
        wf = engine.register(Concurrent, name="concurrent", limits={"instance_state_bytes": 3 * MIB})
        inst = await wf.create(id="c")
        await wait_for_status(inst, "errored")
        assert "The instance has exceeded the 3MiB storage limit" in (await get_error(inst)).message
        rows, size = stored_blobs(url, tmp_path)
        assert rows <= 1 and size <= 2 * MIB


async def test_the_test_kit_hands_back_the_byte_stream(url: str) -> None:
    from stepstone.testing import wait_for_step_result

    async with Engine(url) as engine:
        wf = engine.register(Restartable, name="restartable")
        inst = await wf.create(id="kit")
        got = await wait_for_step_result(inst, "big")
        assert isinstance(got, ByteStream) and await got.read() == PATTERN * 2


class FromR2(WorkflowEntrypoint):
    """Cloudflare's changelog example: a step returns an R2 object's body (``params["used"]``: read it first)."""

    async def run(self, event: Any, step: Any) -> Any:
        from stepstone.bindings.r2 import R2Bucket
        from stepstone.clock import SystemClock

        bucket = R2Bucket(Path(event.payload["root"]), name="files", clock=SystemClock())

        async def fetch_large_file() -> Any:
            await bucket.put("large-file.bin", PATTERN * 3)
            obj = await bucket.get("large-file.bin")
            if event.payload["used"]:
                await obj.body.bytes()  # reads (and locks) the stream
            return obj.body

        return await digest_of(await step.do("fetch-large-file", fetch_large_file))


@pytest.mark.parametrize("used", [False, True])
async def test_an_r2_body_returned_from_a_step_is_streamed(url: str, tmp_path: Path, used: bool) -> None:
    async with Engine(url) as engine:
        wf = engine.register(FromR2, name="fromr2")
        inst = await wf.create(id="r2", params={"root": str(tmp_path / "r2"), "used": used})
        if not used:
            assert (await wait_for_status(inst, "complete")).output == [3 * MIB, expected_sha256(3)]
            return
        await wait_for_status(inst, "errored")
        assert "is a ReadableStream that is already locked" in (await get_error(inst)).message
