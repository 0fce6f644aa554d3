"""``GET .../instances/{id}/subscribe`` over a real HTTP server (a subprocess): server-sent events in the order
the Python API yields them; a reader that reconnects with its cursor (or ``Last-Event-ID``) loses nothing and
sees nothing twice; bad parameters are 400s."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server_process import running_server

AUTH = {"Authorization": "Bearer t"}
JOURNEY = [
    ("workflow_queued",),
    ("workflow_started",),
    ("workflow_running",),
    ("step_started", "flaky"),
    ("attempt_started", "flaky", 1),
    ("attempt_errored", "flaky", 1),
    ("attempt_started", "flaky", 2),
    ("attempt_completed", "flaky", 2),
    ("step_completed", "flaky"),
    ("sleep_started", "nap"),
    ("sleep_completed", "nap"),
    ("wait_started", "approval"),
    ("workflow_waiting",),
    ("workflow_paused",),
    ("workflow_queued",),
    ("workflow_running",),
    ("wait_completed", "approval"),
    ("step_started", "secret"),
    ("attempt_started", "secret", 1),
    ("attempt_completed", "secret", 1),
    ("step_completed", "secret"),
    ("workflow_completed",),
]
RESTARTED = [
    *JOURNEY[:5],
    ("attempt_completed", "flaky", 1),
    *JOURNEY[8:13],
    *JOURNEY[15:],
]


def _brief(ev: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(x for x in (ev["type"], ev.get("stepName"), ev.get("attempt")) if x is not None)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("events")) as url:
        yield url


def _url(base: str, instance: str, workflow: str = "journey") -> str:
    return f"{base}/client/v4/accounts/local/workflows/{workflow}/instances/{instance}"


class Reader:
    """Reads one subscription in the background, parsing each SSE message."""

    def __init__(self, client: httpx.AsyncClient, url: str, **kwargs: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self.raw: list[tuple[str, str]] = []  # (id, event) as the SSE fields carried them
        self.task = asyncio.create_task(self._read(client, url, kwargs))

    async def _read(self, client: httpx.AsyncClient, url: str, kwargs: dict[str, Any]) -> None:
        async with client.stream("GET", url + "/subscribe", **kwargs) as answer:
            assert answer.status_code == 200, await answer.aread()
            assert answer.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for line in answer.aiter_lines():
                if line.startswith(":"):
                    continue
                if line == "":
                    if "data" in fields:
                        event = json.loads(fields["data"])
                        self.raw.append((fields["id"], fields["event"]))
                        self.events.append(event)
                    fields = {}
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value

    async def until(self, kind: str) -> None:
        for _ in range(1000):
            if any(e["type"] == kind for e in self.events) or self.task.done():
                break
            await asyncio.sleep(0.01)
        assert any(e["type"] == kind for e in self.events), [_brief(e) for e in self.events]


async def _journey(base: str) -> None:
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as client:
        created = await client.post(_url(base, "")[:-1], json={"instance_id": "h1", "params": {"who": "bo"}})
        assert created.status_code == 200, created.text
        one = _url(base, "h1")
        reader = Reader(client, one)
        await reader.until("workflow_waiting")
        assert (await client.patch(one + "/status", json={"status": "pause"})).status_code == 200
        await reader.until("workflow_paused")
        await client.post(one + "/events/approval", json={"ok": True})
        assert (await client.patch(one + "/status", json={"status": "resume"})).status_code == 200
        await asyncio.wait_for(reader.task, 20)  # the server ends the stream after workflow_completed
        events = reader.events
        assert [_brief(e) for e in events] == JOURNEY
        assert reader.raw == [(str(e["eventId"]), e["type"]) for e in events]
        assert events[1]["params"] == {"who": "bo"}
        assert events[5]["retryDelayMs"] == 10 and events[5]["error"]["message"] == "first attempt fails"
        assert events[-2]["output"] == "[REDACTED]"
        assert events[-1]["output"] == {"approved": True}

        # reconnecting with the last id processed, by query or by Last-Event-ID, gives exactly the rest
        for cut in (0, 7, len(events) - 1):
            cursor = str(events[cut]["eventId"])
            by_query = Reader(client, one, params={"cursor": cursor})
            by_header = Reader(client, one, headers={"Last-Event-ID": cursor})
            await asyncio.wait_for(asyncio.gather(by_query.task, by_header.task), 20)
            assert by_query.events == by_header.events == events[cut + 1 :]
        filtered = Reader(
            client, one, params=[("filter", "attempt_errored,step_completed"), ("filter", "wait_started")]
        )
        await asyncio.wait_for(filtered.task, 20)
        assert [e["type"] for e in filtered.events] == [
            "attempt_errored",
            "step_completed",
            "wait_started",
            "step_completed",
        ]

        # a restart starts a new record: the reader sees the run again (the first attempt succeeds this time)
        assert (await client.patch(one + "/status", json={"status": "restart"})).status_code == 200
        again = Reader(client, one)
        await again.until("workflow_waiting")
        await client.post(one + "/events/approval", json={"ok": False})
        await asyncio.wait_for(again.task, 20)
        assert [_brief(e) for e in again.events] == RESTARTED
        assert again.events[0]["eventId"] > events[-1]["eventId"]


def test_subscribe_over_http(base: str) -> None:
    asyncio.run(_journey(base))


@pytest.mark.parametrize(
    ("query", "headers", "needle"),
    [
        ({"cursor": "-1"}, {}, "cursor"),
        ({"cursor": "abc"}, {}, "cursor"),
        ({"cursor": "1e30"}, {}, "cursor"),
        ({"filter": "workflow_done"}, {}, "workflow_done"),
        ({}, {"Last-Event-ID": "x1"}, "Last-Event-ID"),
    ],
)
def test_bad_parameters_are_400(base: str, query: dict[str, str], headers: dict[str, str], needle: str) -> None:
    with httpx.Client(headers=AUTH, timeout=10) as client:
        client.post(_url(base, "")[:-1].replace("journey", "quick"), json={"instance_id": "q1"})
        answer = client.get(_url(base, "q1", "quick") + "/subscribe", params=query, headers=headers)
    assert answer.status_code == 400, answer.text
    assert needle in answer.json()["errors"][0]["message"]


def test_unknown_instance_and_other_accounts_are_404(base: str) -> None:
    with httpx.Client(headers=AUTH, timeout=10) as client:
        answer = client.get(_url(base, "nobody") + "/subscribe")
        assert answer.status_code == 404
        client.post(_url(base, "")[:-1].replace("journey", "quick"), json={"instance_id": "q3"})
        assert client.get(_url(base, "q3", "quick") + "/subscribe").status_code == 200
        other = _url(base, "q3", "quick").replace("/accounts/local/", "/accounts/other/")
        assert client.get(other + "/subscribe").status_code == 404  # another account's instance is not reached


def test_explorer_route_streams_too(base: str, tmp_path: Path) -> None:
    with httpx.Client(headers=AUTH, timeout=10) as client:
        client.post(_url(base, "")[:-1].replace("journey", "quick"), json={"instance_id": "q2"})
        answer = client.get(f"{base}/cdn-cgi/explorer/api/workflows/quick/instances/q2/subscribe")
    assert answer.status_code == 200
    types = [line.split(": ", 1)[1] for line in answer.text.splitlines() if line.startswith("event: ")]
    assert types[0] == "workflow_queued" and types[-1] == "workflow_completed"
