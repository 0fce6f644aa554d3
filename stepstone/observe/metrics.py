"""Prometheus metrics (``prometheus-client``) on a registry of the engine's own, never a module global.

:class:`Metrics` is an :class:`~stepstone.observe.observer.Observer`: counters and histograms move as the engine
reports runs, steps and attempts; the gauges of instances by status are read from storage at scrape time
(:meth:`Metrics.exposition`), so every process reports the database's truth. Labels are workflow names and
small fixed sets (status, outcome, trigger): never an instance id. ``docs/observe.md`` lists every metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from stepstone.models import STATUSES, Claim, InstanceRecord, StepRecord
from stepstone.observe.observer import Observer, first_run
from stepstone.run_state import RunState
from stepstone.storage.base import Storage

CONTENT_TYPE: Final[str] = "text/plain; version=0.0.4; charset=utf-8"
"""The exposition format's content type."""

_FAST: Final = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)
_SLOW: Final = (0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400)


class _StorageCollector(Collector):
    """Gauges and counters whose values live elsewhere: instances by status (read by :meth:`Metrics.refresh`),
    the worker's slots, and the storage's commit counters."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        by_status = GaugeMetricFamily(
            "stepstone_instances", "Instances in the database by workflow and status (read at scrape time).",
            labels=["workflow", "status"],
        )  # fmt: skip
        for (workflow, status), n in sorted(m.counts.items()):
            by_status.add_metric([workflow, status], n)
        yield by_status
        worker = m.worker()
        if worker is not None:
            yield GaugeMetricFamily(
                "stepstone_worker_slots_in_use", "Instances this worker runs now (waiting ones excluded).",
                value=worker.busy,
            )  # fmt: skip
            yield GaugeMetricFamily(
                "stepstone_worker_slots", "Instances this worker may run at once (its concurrency).",
                value=worker.concurrency,
            )  # fmt: skip
        stats = getattr(m.storage, "commit_stats", None)
        if isinstance(stats, tuple):
            commits, writes = stats
            yield CounterMetricFamily(
                "stepstone_storage_commits", "Transactions committed by this process's group-commit writer.",
                value=commits,
            )  # fmt: skip
            yield CounterMetricFamily(
                "stepstone_storage_commit_writes",
                "Writes carried by those commits: rate(writes) / rate(commits) is the mean commit batch size.",
                value=writes,
            )


class Metrics(Observer):
    """The engine's Prometheus metrics on ``registry`` (a fresh one per engine by default).

    Args:
        storage: where the gauges of instances by status are read at scrape time.
        worker: returns the engine's worker, or None (no worker gauges then).
        registry: the registry to register on.
    """

    def __init__(
        self,
        storage: Storage,
        worker: Callable[[], Any] = lambda: None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.storage = storage
        self.worker = worker
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.counts: dict[tuple[str, str], int] = {}
        r = self.registry
        self.created = Counter(
            "stepstone_instances_created", "Instances created in this process.", ["workflow", "trigger"], registry=r
        )
        self.finished = Counter(
            "stepstone_instances_finished", "Instances finished by runs (or terminated by the API) in this process.",
            ["workflow", "status"],
            registry=r,
        )  # fmt: skip
        self.runs = Counter(
            "stepstone_runs", "Runs (replays) of instances by how they ended.", ["workflow", "outcome"], registry=r
        )
        self.attempts = Counter(
            "stepstone_step_attempts", "step.do attempts by outcome (success, failure).", ["workflow", "outcome"],
            registry=r,
        )  # fmt: skip
        self.steps = Counter(
            "stepstone_steps_finished", "step.do steps settled, by status (success, error).", ["workflow", "status"],
            registry=r,
        )  # fmt: skip
        self.attempt_seconds = Histogram(
            "stepstone_step_attempt_duration_seconds", "Duration of one step.do attempt.", ["workflow", "outcome"],
            buckets=_FAST, registry=r,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "stepstone_step_duration_seconds",
            "A step.do from its first attempt's start to its result (retry waits included).",
            ["workflow", "status"], buckets=_SLOW, registry=r,
        )  # fmt: skip
        self.instance_seconds = Histogram(
            "stepstone_instance_duration_seconds", "An instance from its creation to its end.",
            ["workflow", "status"], buckets=_SLOW, registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "stepstone_queue_wait_seconds", "From an instance's creation to the start of its first run.",
            ["workflow"], buckets=_FAST, registry=r,
        )  # fmt: skip
        self.lateness = Histogram(
            "stepstone_timer_lateness_seconds",
            "How late a timer was served: a sleep's end or an event wait's timeout, versus its due time.",
            ["workflow", "kind"], buckets=_FAST, registry=r,
        )  # fmt: skip
        self.takeovers = Counter(
            "stepstone_lease_takeovers", "Instances claimed from a worker whose lease had expired.", registry=r
        )
        self.running = Gauge(
            "stepstone_runs_in_progress", "Runs in progress in this process.", ["workflow"], registry=r
        )
        r.register(_StorageCollector(self))

    # -- observer ---------------------------------------------------------------------------------------
    def instances_created(self, records: Sequence[InstanceRecord], *, now: float) -> None:
        for rec in records:
            self.created.labels(rec.workflow, rec.trigger_source).inc()

    def run_started(self, claim: Claim, *, now: float) -> None:
        inst = claim.instance
        self.running.labels(inst.workflow).inc()
        if first_run(inst):
            self.queue_wait.labels(inst.workflow).observe(max((inst.started_on or now) - inst.created_on, 0.0))

    def instance_terminated(self, record: InstanceRecord, *, now: float) -> None:
        self.finished.labels(record.workflow, "terminated").inc()
        self.instance_seconds.labels(record.workflow, "terminated").observe(max(now - record.created_on, 0.0))

    def run_finished(self, claim: Claim, outcome: str, *, now: float, error: tuple[str, str] | None) -> None:
        inst = claim.instance
        self.running.labels(inst.workflow).dec()
        self.runs.labels(inst.workflow, outcome).inc()
        # "terminated": a run that rolled back a terminate(rollback=True) ended it (a plain terminate is counted
        # by instance_terminated, where the API ends it)
        if outcome in ("complete", "errored", "terminated"):
            self.finished.labels(inst.workflow, outcome).inc()
            self.instance_seconds.labels(inst.workflow, outcome).observe(max(now - inst.created_on, 0.0))

    def step_written(self, state: RunState, step: StepRecord) -> None:
        wf = state.workflow
        if step.kind == "do":
            att = step.attempts[-1] if step.attempts else None
            if att is None or att.end is None or step.status == "running":
                return
            outcome = "success" if att.success else "failure"
            self.attempts.labels(wf, outcome).inc()
            self.attempt_seconds.labels(wf, outcome).observe(max(att.end - att.start, 0.0))
            if step.status in ("success", "error"):
                self.steps.labels(wf, step.status).inc()
                ended = step.ended_at if step.ended_at is not None else att.end
                self.step_seconds.labels(wf, step.status).observe(max(ended - step.started_at, 0.0))
        elif step.wake_at is not None and (
            (step.kind == "sleep" and step.status == "success") or (step.kind == "wait" and step.status == "timeout")
        ):
            late = state.clock.now() - step.wake_at
            self.lateness.labels(wf, "sleep" if step.kind == "sleep" else "wait_timeout").observe(max(late, 0.0))

    def claimed(self, *, takeovers: int) -> None:
        self.takeovers.inc(takeovers)

    # -- scraping ---------------------------------------------------------------------------------------
    async def refresh(self) -> None:
        """Read the instance counts by workflow and status from storage."""
        counts: dict[tuple[str, str], int] = {}
        for wf in await self.storage.list_workflows(None):  # /metrics needs a token allowed every account
            by_status = await self.storage.count_by_status(wf.account, wf.name)
            for status in STATUSES:  # a workflow name in several accounts: one series, their sum
                counts[(wf.name, status)] = counts.get((wf.name, status), 0) + int(by_status.get(status, 0))
        self.counts = counts

    async def exposition(self) -> bytes:
        """The metrics in Prometheus' text format, with the storage gauges read now."""
        await self.refresh()
        return generate_latest(self.registry)


class _Families(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        yield from self.families


def merge_expositions(texts: Sequence[str]) -> bytes:
    """Several processes' expositions as one (``stepstone dev``: its API process and its worker child): samples
    with the same name and labels are added up, except gauges, where the largest wins (the storage gauges are
    read by both from the same database; the worker gauges exist in one)."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            samples = values.setdefault(family.name, {})
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = samples.get(key)
                if old is None:
                    samples[key] = sample.value
                elif into.type == "gauge":
                    samples[key] = max(old, sample.value)
                else:
                    samples[key] = old + sample.value
    for name, family in merged.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(list(merged.values())))
    return generate_latest(registry)


async def serve_metrics(metrics: Metrics, *, host: str, port: int, ready: asyncio.Event | None = None) -> None:
    """Answer ``GET /metrics`` on ``host:port`` until cancelled (``stepstone worker --metrics-port``): a few
    lines of asyncio rather than prometheus-client's threaded server, so the storage gauges are read on the loop.
    """
    log = logging.getLogger("stepstone.observe")

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, _, rest = request.decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            if method == "GET" and path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE, await metrics.exposition()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"only GET /metrics here\n"
            head = f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, host, port)
    async with server:
        bound = server.sockets[0].getsockname()
        log.info("metrics on http://%s:%d/metrics", bound[0], bound[1])
        if ready is not None:
            ready.set()
        await server.serve_forever()
