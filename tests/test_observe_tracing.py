"""Traces: spans per run, live step and attempt, none for replayed steps; the creator's trace carried across
hibernation through the stored traceparent. Uses the OpenTelemetry SDK's in-memory exporter."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from stepstone import Engine, ValidationError, WorkflowEntrypoint
from stepstone.observe.tracing import TraceObserver
from stepstone.testing import wait_for_status


class Traced(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        first = await step.do("first", lambda: 1)

        def flaky(ctx: Any) -> int:
            if ctx.attempt == 1:
                raise KeyError("once")
            return 2

        # Long enough that the retry wait and the sleep are still ahead when the run reaches them, however slow
        # the machine: each hibernates (inprocess_wait_s=0), which is what makes three runs.
        second = await step.do("second", {"retries": {"limit": 1, "delay": 300, "backoff": "constant"}}, flaky)
        await step.sleep("nap", 300)
        return first + second


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exported))
    # The global provider can be set once per process: point the observer at ours instead.
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    yield exported


async def test_spans_per_run_step_and_attempt_in_the_creators_trace(
    db_url: str, exporter: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer_provider().get_tracer("test")
    async with Engine(db_url, inprocess_wait_s=0.0, poll_interval=0.02) as engine:
        assert any(isinstance(o, TraceObserver) for o in engine.observers.observers)
        wf = engine.register(Traced, name="traced")
        with tracer.start_as_current_span("caller") as caller:
            inst = await wf.create(id="t-1")
        record = await inst.record()
        trace_id = caller.get_span_context().trace_id
        assert record.traceparent is not None
        assert record.traceparent.startswith(f"00-{trace_id:032x}-{caller.get_span_context().span_id:016x}-")
        await wait_for_status(inst, "complete")
    spans = exporter.get_finished_spans()
    assert all(s.context.trace_id == trace_id for s in spans)  # one trace across three runs
    runs = [s for s in spans if s.name == "run traced"]
    # Run 1: "first", then "second" fails once and the retry wait hibernates; run 2: "second" succeeds, the
    # sleep hibernates; run 3: the sleep is over, the instance completes.
    assert [r.attributes["stepstone.run.outcome"] for r in runs] == ["waiting", "waiting", "complete"]
    assert all(r.parent is not None and r.parent.span_id == caller.get_span_context().span_id for r in runs)
    steps = [s for s in spans if s.name.startswith("step ")]
    # "first" is traced once (replays of it make no span); "second" once per run that ran an attempt of it.
    assert sorted((s.name, s.attributes["stepstone.step.status"]) for s in steps) == [
        ("step first", "success"),
        ("step second", "retrying"),
        ("step second", "success"),
    ]
    attempts = [s for s in spans if s.name.startswith("attempt ")]
    assert sorted((s.attributes["stepstone.step.name"], s.name, s.status.status_code.name) for s in attempts) == [
        ("first", "attempt 1", "UNSET"),
        ("second", "attempt 1", "ERROR"),
        ("second", "attempt 2", "UNSET"),
    ]
    failed = next(s for s in attempts if s.status.status_code.name == "ERROR")
    assert failed.attributes["error.type"] == "KeyError"
    assert any(e.name == "exception" for e in failed.events)
    by_id = {s.context.span_id: s for s in spans}
    for attempt in attempts:  # attempt → step → run
        assert attempt.parent is not None
        step_span = by_id[attempt.parent.span_id]
        assert step_span.name == f"step {attempt.attributes['stepstone.step.name']}"
        assert step_span.parent is not None and by_id[step_span.parent.span_id].name == "run traced"
    assert any(e.name == "sleep" for r in runs for e in r.events)


async def test_a_given_traceparent_is_checked_and_kept(db_url: str, exporter: InMemorySpanExporter) -> None:
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with Engine(db_url, worker=False) as engine:
        wf = engine.register(Traced, name="traced")
        inst = await wf.create(id="a", traceparent=parent)
        assert (await inst.record()).traceparent == parent
        with pytest.raises(ValidationError, match="traceparent 'nope'"):
            await wf.create(id="b", traceparent="nope")
        untraced = await wf.create(id="c")  # no current span: nothing stored
        assert (await untraced.record()).traceparent is None


async def test_the_rest_create_reads_the_traceparent_header(db_url: str) -> None:
    import httpx

    from stepstone.server import create_app

    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    engine = Engine(db_url, worker=False)
    wf = engine.register(Traced, name="traced")
    async with engine:
        app = create_app(engine, loopback_only=True)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8787") as api:
            url = "/client/v4/accounts/local/workflows/traced/instances"
            for iid, header in (("h-1", parent), ("h-2", "garbage")):
                answer = await api.post(url, json={"instance_id": iid}, headers={"traceparent": header})
                assert answer.status_code == 200, answer.text
        assert (await (await wf.get("h-1")).record()).traceparent == parent
        assert (await (await wf.get("h-2")).record()).traceparent is None  # malformed: ignored, as W3C says
