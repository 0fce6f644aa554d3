"""Metrics: scrape /metrics of a real server process and read it with Prometheus' own text parser."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from stepstone import Engine, WorkflowEntrypoint
from stepstone.observe.metrics import Metrics, merge_expositions
from stepstone.testing import wait_for_status
from tests.server_process import running_server

V4 = "/client/v4/accounts/local/workflows"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(all_: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return all_.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_of_a_real_server_after_a_retried_step(tmp_path: Path) -> None:
    with running_server(tmp_path) as base, httpx.Client(base_url=base, timeout=10) as http:
        # a termination through the API is an instance finished too (this one hibernates first: no run is cut)
        assert http.post(f"{V4}/sleeper/instances", json={"instance_id": "m-2"}).status_code == 200
        deadline = time.monotonic() + 20
        while http.get(f"{V4}/sleeper/instances/m-2").json()["result"]["status"] != "waiting":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        stopped = http.patch(f"{V4}/sleeper/instances/m-2/status", json={"status": "terminate"})
        assert stopped.status_code == 200, stopped.text
        created = http.post(f"{V4}/waiter/instances", json={"instance_id": "m-1", "params": {}})
        assert created.status_code == 200, created.text
        deadline = time.monotonic() + 20
        while http.get(f"{V4}/waiter/instances/m-1").json()["result"]["status"] != "waiting":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        waiting = samples(http.get("/metrics").text)
        assert value(waiting, "stepstone_instances", workflow="waiter", status="waiting") == 1
        assert http.post(f"{V4}/waiter/instances/m-1/events/approval", json={"ok": True}).status_code == 200
        while http.get(f"{V4}/waiter/instances/m-1").json()["result"]["status"] != "complete":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        answer = http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    got = samples(answer.text)
    wf = "waiter"
    assert value(got, "stepstone_instances_created_total", workflow=wf, trigger="api") == 1
    assert value(got, "stepstone_instances_finished_total", workflow=wf, status="complete") == 1
    assert value(got, "stepstone_instances_finished_total", workflow="sleeper", status="terminated") == 1
    assert value(got, "stepstone_instance_duration_seconds_count", workflow="sleeper", status="terminated") == 1
    # "prepare" fails once then succeeds; "secret" succeeds at once.
    assert value(got, "stepstone_step_attempts_total", workflow=wf, outcome="failure") == 1
    assert value(got, "stepstone_step_attempts_total", workflow=wf, outcome="success") == 2
    assert value(got, "stepstone_steps_finished_total", workflow=wf, status="success") == 2
    assert value(got, "stepstone_step_attempt_duration_seconds_count", workflow=wf, outcome="failure") == 1
    assert value(got, "stepstone_step_duration_seconds_count", workflow=wf, status="success") == 2
    assert value(got, "stepstone_instance_duration_seconds_count", workflow=wf, status="complete") == 1
    assert value(got, "stepstone_queue_wait_seconds_count", workflow=wf) == 1
    assert value(got, "stepstone_instances", workflow=wf, status="complete") == 1
    assert value(got, "stepstone_instances", workflow=wf, status="waiting") == 0
    assert value(got, "stepstone_runs_total", workflow=wf, outcome="waiting") == 1  # hibernated for the event
    assert value(got, "stepstone_runs_total", workflow=wf, outcome="complete") == 1
    assert value(got, "stepstone_runs_in_progress", workflow=wf) == 0
    assert value(got, "stepstone_worker_slots_in_use") == 0
    assert value(got, "stepstone_worker_slots") == 100
    assert value(got, "stepstone_lease_takeovers_total") == 0
    assert value(got, "stepstone_storage_commits_total") > 0
    assert value(got, "stepstone_storage_commit_writes_total") >= value(got, "stepstone_storage_commits_total")
    # No label anywhere carries the instance id.
    assert "m-1" not in answer.text and "m-2" not in answer.text


class Napper(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.sleep("nap", 20)
        return 1


async def test_registries_are_per_engine_and_timers_measure_lateness(tmp_path: Path) -> None:
    texts = []
    for n in range(2):
        async with Engine(f"sqlite:///{tmp_path / f'{n}.db'}", inprocess_wait_s=0.0, poll_interval=0.02) as engine:
            metrics = engine.enable_metrics()
            assert engine.enable_metrics() is metrics
            wf = engine.register(Napper, name="napper")
            inst = await wf.create(id="x")
            await wait_for_status(inst, "complete")
            texts.append((await metrics.exposition()).decode())
    for text in texts:  # each engine counts only its own instance
        got = samples(text)
        assert value(got, "stepstone_instances_created_total", workflow="napper", trigger="binding") == 1
        assert value(got, "stepstone_timer_lateness_seconds_count", workflow="napper", kind="sleep") == 1
    merged = samples(merge_expositions(texts).decode())
    assert value(merged, "stepstone_instances_created_total", workflow="napper", trigger="binding") == 2
    assert value(merged, "stepstone_instances", workflow="napper", status="complete") == 1  # gauges: the max
    assert isinstance(metrics, Metrics)
