"""Values a run produces that cannot be stored end the instance ``errored`` with a message naming the problem,
on SQLite and PostgreSQL, instead of leaving it ``running`` to be replayed every lease period.

An unencodable output fails the instance (``WorkflowFatalError`` naming the value's problem and where it is); a
step returning one fails with Cloudflare's ``WorkflowFatalError`` naming the step, after one attempt, even when
``run()`` catches it; an exception whose message or name holds text no backend can store (a lone surrogate, a
NUL) is recorded with that text escaped. Each run uses a 600 s lease, so only a finished instance passes.
"""

from __future__ import annotations

from typing import Any

import pytest

from stepstone import Engine, WorkflowEntrypoint
from stepstone.testing import wait_for_status


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no")


def _deep() -> list[Any]:
    value: list[Any] = []
    for _ in range(100_000):
        value = [value]
    return value


OUTPUTS: dict[str, Any] = {
    "surrogate": "\ud800",
    "key": {"ok": {"\udfff": 1}},
    "object": {"a": [object()]},
    "nan": float("nan"),
    "huge-int": 10**5000,
    "deep": None,  # built per run: _deep()
}


class Produces(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        kind = event.payload["kind"]
        if kind == "deep":
            return _deep()
        if kind in OUTPUTS:
            return OUTPUTS[kind]
        if kind == "step":
            return await step.do("bad", {"retries": {"limit": 3, "delay": 10}}, lambda: {"x": ["\udfff"]})
        if kind == "step-caught":
            try:
                await step.do("bad", {"retries": {"limit": 3, "delay": 10}}, lambda: {"x": ["\udfff"]})
            except Exception:
                return "caught"
        if kind == "raise":
            raise ValueError("bad \ud800 and \x00 text")
        if kind == "step-raise":

            def fails() -> None:
                raise ValueError("bad \ud800 and \x00 text")

            return await step.do("boom", {"retries": {"limit": 1, "delay": 10}}, fails)
        if kind == "unprintable":
            raise Unprintable()
        raise AssertionError(kind)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_url"))
    return str(request.getfixturevalue("postgres_url"))


async def _run_all(database: str, kinds: list[str]) -> dict[str, Any]:
    async with Engine(database, lease_seconds=600, poll_interval=0.05) as engine:
        wf = engine.register(Produces, name="produces")
        for kind in kinds:
            await wf.create(id=kind, params={"kind": kind})
        statuses = {}
        for kind in kinds:
            statuses[kind] = await wait_for_status(await wf.get(kind), timeout=30)
        steps = {}
        for kind in kinds:
            record = await engine.storage.get_instance("local", "produces", kind)
            assert record is not None
            steps[kind] = (await engine.storage.load_history(record.pk))[0]
        assert engine.worker is not None and "failed" not in engine.worker.outcomes  # no engine error on the way
        return {"status": statuses, "steps": steps}


async def test_an_output_that_cannot_be_stored_errors_the_instance(database: str) -> None:
    kinds = list(OUTPUTS)
    found = await _run_all(database, kinds)
    expected = {
        "surrogate": "a lone surrogate '\\ud800' at index 0 of the string at $",
        "key": "a lone surrogate '\\udfff' at index 0 of the key at $.ok[",
        "object": "object at $.a[0]",
        "nan": "float nan at $",
        "huge-int": "Exceeds the limit (4300 digits) for integer string conversion",
        "deep": "nested too deeply",
    }
    for kind in kinds:
        status = found["status"][kind]
        assert status.status == "errored", (kind, status)
        assert status.error.name == "WorkflowFatalError"
        assert status.error.message.startswith("the workflow's output cannot be stored: "), status.error.message
        assert expected[kind] in status.error.message, (kind, status.error.message)


async def test_a_step_result_that_cannot_be_stored_fails_the_step_once_and_the_instance(database: str) -> None:
    found = await _run_all(database, ["step", "step-caught"])
    for kind in ("step", "step-caught"):  # catching the step's exception in run() changes nothing
        status = found["status"][kind]
        assert status.status == "errored", (kind, status)
        assert status.error.name == "WorkflowFatalError"
        assert status.error.message.startswith(
            'The execution of the Workflow instance was terminated, as the step "bad-1" returned a value which is '
            "not serialisable: "
        )
        assert "a lone surrogate '\\udfff' at index 0 of the string at $.x[0]" in status.error.message
        (bad,) = found["steps"][kind]
        assert bad.status == "error" and bad.error_name == "WorkflowFatalError"
        assert len(bad.attempts) == 1  # no retry: the same value would fail again


async def test_errors_with_unstorable_text_are_recorded_escaped(database: str) -> None:
    found = await _run_all(database, ["raise", "step-raise", "unprintable"])
    escaped = "bad \\ud800 and \\x00 text"
    raised = found["status"]["raise"]
    assert raised.status == "errored" and (raised.error.name, raised.error.message) == ("ValueError", escaped)
    stepped = found["status"]["step-raise"]
    assert stepped.status == "errored" and (stepped.error.name, stepped.error.message) == ("ValueError", escaped)
    (boom,) = found["steps"]["step-raise"]
    assert boom.status == "error" and boom.error_message == escaped
    assert [a.error_message for a in boom.attempts] == [escaped, escaped]  # both attempts, each recorded
    unprintable = found["status"]["unprintable"]
    assert unprintable.status == "errored" and unprintable.error.name == "Unprintable"
    assert unprintable.error.message == "<the message of this Unprintable cannot be shown: RuntimeError>"


async def test_a_replay_raises_the_recorded_step_error(database: str) -> None:
    """The escaped message is what a replay re-raises: the stored form, the same on every replay."""

    class Catches(WorkflowEntrypoint):
        async def run(self, event: Any, step: Any) -> Any:
            def fails() -> None:
                raise ValueError("x\ud800")

            try:
                await step.do("boom", {"retries": {"limit": 0}}, fails)
            except ValueError as exc:
                seen = str(exc)
            await step.sleep("replay me", 1500)  # hibernates: the rest runs in a replay
            return {"seen": seen}

    async with Engine(database, lease_seconds=600, poll_interval=0.05, inprocess_wait_s=0.1) as engine:
        wf = engine.register(Catches, name="catches")
        handle = await wf.create(id="c")
        status = await wait_for_status(handle, timeout=30)
    assert status.status == "complete" and status.output == {"seen": "x\\ud800"}
