"""OpenTelemetry spans (``stepstone[otel]``): one per run of an instance, per live step, per attempt.

Nothing is traced unless ``opentelemetry-api`` is installed and a tracer provider is set (the SDK's, by the
application): without one, :class:`TraceObserver` returns at the start of each run and adds nothing to steps.
A run's span is the child of the instance's stored ``traceparent`` (the creator's span), so every run of an
instance, on any worker, after any sleep, lands in the creator's trace. Replayed steps get no span: spans open
only around live attempts. Attributes are ``stepstone.*``, plus the general ``error.type`` convention.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Final

from stepstone.models import Claim, Lease, StepRecord
from stepstone.observe.observer import Observer
from stepstone.run_state import RunState

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider, Span, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - the otel extra is not installed
    trace = None  # type: ignore[assignment]

TRACEPARENT: Final = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")
"""W3C Trace Context's ``traceparent``: version, trace id, parent span id, flags (lower-case hex)."""


def valid_traceparent(value: object) -> bool:
    """Whether ``value`` is a well-formed ``traceparent`` (an all-zero trace or span id is not)."""
    if not isinstance(value, str) or not TRACEPARENT.match(value):
        return False
    _, trace_id, span_id, _ = value.split("-")
    return trace_id != "0" * 32 and span_id != "0" * 16


def current_traceparent() -> str | None:
    """The ``traceparent`` of the span current in the caller's context, or None (no otel, no span)."""
    if trace is None:
        return None
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier)
    return carrier.get("traceparent")


@dataclass(slots=True)
class _Run:
    span: Any
    context: Any
    steps: dict[str, Any] = field(default_factory=dict)


class TraceObserver(Observer):
    """Spans per run, live step and attempt, on the global tracer provider (read at each run's start)."""

    def __init__(self) -> None:
        self._runs: dict[Lease, _Run] = {}

    def run_started(self, claim: Claim, *, now: float) -> None:
        if trace is None:
            return
        provider = trace.get_tracer_provider()
        if isinstance(provider, ProxyTracerProvider | NoOpTracerProvider):
            return  # no SDK set up: tracing is off, and costs nothing more per step
        inst = claim.instance
        tracer = provider.get_tracer("stepstone")
        parent = None
        if inst.traceparent:
            parent = TraceContextTextMapPropagator().extract({"traceparent": inst.traceparent})
        span = tracer.start_span(
            f"run {inst.workflow}",
            context=parent,
            start_time=int(now * 1e9),
            attributes={
                "stepstone.workflow.name": inst.workflow,
                "stepstone.instance.id": inst.id,
                "stepstone.run.generation": claim.lease.generation,
            },
        )
        ctx = trace.set_span_in_context(span, parent)
        # Called inside the context the run's task copies (Worker._start): user spans in run() nest here.
        otel_context.attach(ctx)
        self._runs[claim.lease] = _Run(span, ctx)

    def run_finished(self, claim: Claim, outcome: str, *, now: float, error: tuple[str, str] | None) -> None:
        run = self._runs.pop(claim.lease, None)
        if run is None:
            return
        end = int(now * 1e9)
        for step_span in run.steps.values():  # steps still retrying when the run hibernated
            step_span.set_attribute("stepstone.step.status", "retrying")
            step_span.end(end_time=end)
        run.span.set_attribute("stepstone.run.outcome", outcome)
        if outcome == "errored" and error is not None:
            run.span.set_attribute("error.type", error[0])
            run.span.set_status(Status(StatusCode.ERROR, f"{error[0]}: {error[1]}"))
        run.span.end(end_time=end)

    def attempt(self, state: RunState, step: StepRecord, attempt: int, aw: Awaitable[Any]) -> Awaitable[Any]:
        if not self._runs:  # tracing is off (no SDK): nothing to look up per step
            return aw
        run = self._runs.get(state.lease)
        if run is None:
            return aw
        step_span = run.steps.get(step.key)
        if step_span is None:
            tracer = trace.get_tracer_provider().get_tracer("stepstone")
            step_span = tracer.start_span(
                f"step {step.name}",
                context=run.context,
                attributes={
                    "stepstone.workflow.name": state.workflow,
                    "stepstone.instance.id": state.instance_id,
                    "stepstone.step.name": step.name,
                    "stepstone.step.count": step.count,
                    "stepstone.step.type": "do",
                },
            )
            run.steps[step.key] = step_span
        return _traced(step_span, step, attempt, aw)

    def step_written(self, state: RunState, step: StepRecord) -> None:
        if not self._runs:
            return
        run = self._runs.get(state.lease)
        if run is None:
            return
        if step.kind == "do" and step.status in ("success", "error"):
            step_span = run.steps.pop(step.key, None)
            if step_span is not None:
                step_span.set_attribute("stepstone.step.status", step.status)
                step_span.set_attribute("stepstone.step.attempts", len(step.attempts))
                if step.status == "error":
                    step_span.set_attribute("error.type", step.error_name or "Error")
                    step_span.set_status(Status(StatusCode.ERROR, f"{step.error_name}: {step.error_message}"))
                step_span.end()
        elif step.kind == "sleep" and step.status == "waiting" and step.wake_at is not None:
            run.span.add_event("sleep", {"stepstone.step.name": step.name, "stepstone.sleep.until": step.wake_at})
        elif step.kind == "wait" and step.status == "waiting":
            run.span.add_event(
                "wait_for_event", {"stepstone.step.name": step.name, "stepstone.event.type": step.event_type or ""}
            )


async def _traced(step_span: Span, step: StepRecord, attempt: int, aw: Awaitable[Any]) -> Any:
    tracer = trace.get_tracer_provider().get_tracer("stepstone")
    with tracer.start_as_current_span(
        f"attempt {attempt}",
        context=trace.set_span_in_context(step_span),
        attributes={"stepstone.step.name": step.name, "stepstone.attempt": attempt},
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        try:
            return await aw
        except Exception as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            raise
