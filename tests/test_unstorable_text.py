"""Text no backend can store (a lone surrogate; a NUL in a plain text field) is refused at the edge with a
ValidationError naming the field (a 400 over REST), on SQLite and PostgreSQL alike, never a 500 or a 503.

Three layers of evidence: the rule itself (:mod:`stepstone.text`, :mod:`stepstone.codec`); named fields over
real HTTP on both backends, with the message checked; and a sweep of every route in the OpenAPI document that
puts a surrogate and a NUL into each path parameter, query parameter and body string (values and keys, nested)
in turn and asserts no answer is a 5xx.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstone import Engine, WorkflowEntrypoint
from stepstone.codec import encode
from stepstone.errors import SerializationError, ValidationError
from stepstone.server.openapi import openapi_document
from stepstone.text import check_text, text_problem
from tests.server_process import Quick, running_server

SURROGATE = "\ud800"
NUL = "\x00"
V4 = "/client/v4/accounts/local/workflows"


# -- the rule -------------------------------------------------------------------------------------------------
def test_text_rule() -> None:
    assert text_problem("plain ascii") is None
    assert text_problem("é 日本 🎉") is None
    assert "lone surrogate" in (text_problem("a\udfffb") or "")
    assert "NUL" in (text_problem("a\x00b") or "")
    assert text_problem("a\x00b", nul=False) is None
    with pytest.raises(ValidationError, match=r"class_name 'C\\ud800' cannot be stored: .*lone surrogate.*index 1"):
        check_text("C\ud800", what="class_name")
    with pytest.raises(ValidationError, match=r"script_name 's\\x00' cannot be stored: .*NUL"):
        check_text("s\x00", what="script_name")


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"a": SURROGATE}, "the string at $.a"),
        ({"a": [1, {"b": "ok" + SURROGATE}]}, "the string at $.a[1].b"),
        ({SURROGATE: 1}, 'the key at $["\\ud800"]'),
        ({"x": {"y" + SURROGATE: b"bytes"}}, 'the key at $.x["y\\ud800"]'),
        ((SURROGATE,), "the string at $[0]"),
        (SURROGATE, "the string at $"),
    ],
)
def test_codec_refuses_surrogates_with_their_path(value: object, where: str) -> None:
    with pytest.raises(SerializationError) as caught:
        encode(value, what="params")
    message = str(caught.value)
    assert message.startswith("params cannot be stored: a lone surrogate")
    assert where in message
    message.encode("utf-8")  # the message itself is always printable and sendable


def test_codec_keeps_nul_inside_values() -> None:
    text = encode({"a\x00": "b\x00"}, what="params")
    assert "\x00" not in text and text.isascii()  # JSON escapes it: every backend stores it


# -- the Python API, both backends ----------------------------------------------------------------------------
class Names(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("step" + SURROGATE, lambda: 1)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("db_url"))
    return str(request.getfixturevalue("postgres_url"))


async def test_python_api_raises_validation_errors(database: str) -> None:
    engine = Engine(database, poll_interval=0.05)
    wf = engine.register(Quick, name="quick")
    with pytest.raises(ValidationError, match="class_name"):
        engine.register(Quick, name="other", class_name="Q" + SURROGATE)
    with pytest.raises(ValidationError, match="script_name"):
        engine.register(Quick, name="other", script_name="s" + NUL)
    async with engine:
        for bad in ({"a": SURROGATE}, {SURROGATE: 1}, {"deep": [{"k": SURROGATE}]}):
            with pytest.raises(SerializationError, match=r"params of instance 'i' cannot be stored"):
                await wf.create(id="i", params=bad)
        with pytest.raises(ValidationError, match="instance id"):
            await wf.create(id="i" + SURROGATE)
        handle = await wf.create(id="i", params={"nul": "a\x00b"})  # a NUL inside a value is stored
        with pytest.raises(SerializationError, match=r"payload of event 'go' cannot be stored"):
            await handle.send_event("go", {"x": SURROGATE})
        with pytest.raises(ValidationError, match="event type"):
            await handle.send_event("go" + SURROGATE, None)
        for bad_name in ("echo" + SURROGATE, "echo" + NUL):
            with pytest.raises(ValidationError, match=r"restart from\.name"):
                await handle.restart({"name": bad_name})
        for bad_id in ("x" + SURROGATE, "x" + NUL):
            with pytest.raises(ValidationError, match="instance id"):
                await wf.get(bad_id)
        with pytest.raises(ValidationError, match="workflow name"):
            engine.workflow("w" + SURROGATE)
        assert (await wf.get("i")).id == "i"


async def test_step_name_with_a_surrogate_fails_the_instance_not_the_database(database: str) -> None:
    engine = Engine(database, poll_interval=0.05)
    wf = engine.register(Names, name="names")
    async with engine:
        handle = await wf.create(id="n")
        for _ in range(400):
            status = await handle.status()
            if status.status in ("complete", "errored"):
                break
            await _sleep()
        assert status.status == "errored", status
        assert status.error is not None and "step name" in status.error.message


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.025)


# -- REST over real HTTP, both backends -----------------------------------------------------------------------
@pytest.fixture
def sqlite_server(tmp_path: Path) -> Iterator[str]:
    with running_server(tmp_path) as base:
        _seed(base)
        yield base


@pytest.fixture
def postgres_server(postgres_url: str, tmp_path: Path) -> Iterator[str]:
    with running_server(tmp_path, database=postgres_url) as base:
        _seed(base)
        yield base


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_server"))


def _seed(base: str) -> None:
    with httpx.Client(base_url=base) as http:
        http.put(f"{V4}/spare", json={"class_name": "Spare", "script_name": "s"}).raise_for_status()
        http.post(f"{V4}/waiter/instances", json={"instance_id": "known"}).raise_for_status()
        http.post(f"{V4}/quick/instances", json={"instance_id": "known"}).raise_for_status()


def _send(http: httpx.Client, method: str, path: str, body: Any = None) -> httpx.Response:
    content = None if body is None else json.dumps(body).encode()  # ensure_ascii: surrogates travel as \ud800
    return http.request(method, path, content=content, headers={"content-type": "application/json"})


def _bad_request(response: httpx.Response) -> str:
    assert response.status_code == 400, response.text
    assert response.headers["x-should-retry"] == "false"
    (error,) = response.json()["errors"]
    return str(error["message"])


NAMED_FIELDS = [
    ("POST", f"{V4}/quick/instances", {"params": {"a": "{bad}"}}, "params of instance"),
    ("POST", f"{V4}/quick/instances", {"params": {"{bad}": 1}}, "params of instance"),
    ("POST", f"{V4}/quick/instances", {"params": json.dumps({"k": {"{bad}": 1}})}, "params of instance"),
    ("POST", f"{V4}/quick/instances", {"instance_id": "x{bad}"}, "instance id"),
    ("POST", f"{V4}/quick/instances/batch", [{"params": {"a": ["{bad}"]}}], "params of instance"),
    ("POST", "/cdn-cgi/explorer/api/workflows/quick/instances", {"params": {"a": "{bad}"}}, "params of instance"),
    ("POST", f"{V4}/waiter/instances/known/events/approval", {"a": "{bad}"}, "payload of event 'approval'"),
    ("PUT", f"{V4}/spare", {"class_name": "C{bad}", "script_name": "s"}, "class_name"),
    ("PUT", f"{V4}/spare", {"class_name": "C", "script_name": "s{bad}"}, "script_name"),
    ("PATCH", f"{V4}/quick/instances/known/status", {"status": "restart", "from": {"name": "e{bad}"}}, "from.name"),
]


def _fill(value: Any, bad: str) -> Any:
    if isinstance(value, str):
        return value.replace("{bad}", bad)
    if isinstance(value, list):
        return [_fill(v, bad) for v in value]
    if isinstance(value, dict):
        return {_fill(k, bad): _fill(v, bad) for k, v in value.items()}
    return value


def _names_the_field(server: str, method: str, path: str, body: Any, field: str) -> None:
    with httpx.Client(base_url=server) as http:
        message = _bad_request(_send(http, method, path, _fill(body, SURROGATE)))
        assert field in message and "\\ud800" in message  # the value, shown escaped
        nul = _send(http, method, path, _fill(body, NUL))
        if field.startswith(("params", "payload")):
            assert nul.status_code == 200, nul.text  # a NUL inside a JSON value is stored (as \u0000)
        else:
            assert field in _bad_request(nul)


def _refuses_an_invalid_cron(server: str) -> None:
    with httpx.Client(base_url=server) as http:
        for cron, reason in (
            ("*/0 * * * *", "step '0' must be a positive integer"),
            ("0 0 * * * *", "6 field(s), expected 5"),
            ("61 * * * *", "minute 61 is out of range 0-59"),
            ("0 25 * * *", "hour 25 is out of range 0-23"),
            ("0 0 32 * *", "day of month 32 is out of range 1-31"),
        ):
            body = {"class_name": "C", "script_name": "s", "schedules": [{"cron": "0 * * * *"}, {"cron": cron}]}
            message = _bad_request(_send(http, "PUT", f"{V4}/spare", body))
            assert message.startswith("schedules[1].cron is invalid: ") and reason in message, message
        good = {"class_name": "C", "script_name": "s", "schedules": [{"cron": "*/5 * * * MON-FRI"}]}
        assert _send(http, "PUT", f"{V4}/spare", good).status_code == 200


# -- every route, every string ----------------------------------------------------------------------------------
VALID_QUERY = {
    "page": "1",
    "per_page": "5",
    "search": "qu",
    "cursor": "eyJvIjogMH0",
    "direction": "asc",
    "status": "complete",
    "date_start": "2024-01-01T00:00:00Z",
    "date_end": "2030-01-01T00:00:00Z",
    "order": "asc",
    "simple": "false",
    "name": "echo-1",
    "type": "step",
    "attempt": "1",
    "filter": "workflow_completed",
}
CREATE = {"params": {"k": "v", "nested": {"list": ["x", {"deep": "y"}]}}}
VALID_BODY: dict[tuple[str, str], Any] = {
    ("PUT", "/workflows/{workflow_name}"): {
        "class_name": "Spare",
        "script_name": "s",
        "schedules": [{"cron": "0 * * * *"}],
        "default_retention": {"success_retention": "1 day"},
        "limits": {"steps": 10},
        "concurrency": {"limit": 2},
    },
    ("POST", "/workflows/{workflow_name}/instances"): {
        **CREATE,
        "instance_retention": {"success_retention": "1 day"},
        "location_hint": "weur",
    },
    ("POST", "/workflows/{workflow_name}/instances/batch"): [CREATE, {"instance_id": "b1", **CREATE}],
    ("POST", "/workflows/{workflow_name}/instances/batch/delete"): {"instances": ["nothing-here"]},
    ("PATCH", "/workflows/{workflow_name}/instances/{instance_id}/status"): {
        "status": "restart",
        "from": {"name": "echo", "count": 1, "type": "do"},
    },
    ("POST", "/workflows/{workflow_name}/instances/{instance_id}/events/{event_type}"): {"k": ["v", {"w": "x"}]},
    ("POST", "/workflows/{workflow_name}/instances/{instance_id}/events"): {
        "type": "go",
        "payload": {"k": ["v", {"w": "x"}]},
    },
    ("PATCH", "explorer/workflows/{workflow_name}/instances/{instance_id}/status"): {
        "action": "restart",
        "from": {"name": "echo"},
    },
    ("POST", "explorer/workflows/{workflow_name}/instances"): {"id": None, **CREATE},
}
PATH_POISON = {SURROGATE: "%ED%A0%80", NUL: "%00"}  # a URL cannot carry a surrogate: its UTF-8 bytes, invalid
PARAMS = {"account_id": "local", "instance_id": "known", "event_type": "approval", "version_id": "v"}


def _operations() -> Iterator[tuple[str, str, Any]]:
    """Every documented operation that takes input, with a valid body for those that take one."""
    for template, ops in openapi_document()["paths"].items():
        for method, op in ops.items():
            if "{" not in template and not op.get("parameters") and "requestBody" not in op:
                continue  # /health, /metrics, memberships: nothing to poison
            tail = template.split("/workflows", 1)[-1]
            prefix = "explorer" if "/explorer/" in template else ""
            body = VALID_BODY.get((method.upper(), f"{prefix}/workflows{tail}"))
            if body is None:
                body = VALID_BODY.get((method.upper(), f"/workflows{tail}"))
            assert ("requestBody" in op) == (body is not None), f"no valid body for {method.upper()} {template}"
            yield method.upper(), template, body


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], bool]]:
    """Every string in ``value``: (its path, whether it is a key)."""
    if isinstance(value, str):
        yield path, False
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, (*path, i))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield (*path, k), True
            yield from _leaves(v, (*path, k))


def _poisoned(body: Any, path: tuple[Any, ...], is_key: bool, bad: str) -> Any:
    copied = copy.deepcopy(body)
    parent = copied
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1] if path else None
    if not path:
        return bad
    if is_key:
        parent[f"{last}{bad}"] = parent.pop(last)
    else:
        parent[last] = f"{parent[last]}{bad}"
    return copied


def _variants(method: str, template: str, body: Any, version: str) -> Iterator[tuple[str, str, Any, str]]:
    """(method, url, body, what was poisoned) for each poison in each place."""
    names = dict(PARAMS, version_id=version)
    names["workflow_name"] = "spare" if method in ("PUT", "DELETE") else "quick"
    placeholders = re.findall(r"{(\w+)}", template)
    op = openapi_document()["paths"][template][method.lower()]
    query = {p["name"]: VALID_QUERY[p["name"]] for p in op.get("parameters", []) if p.get("in") == "query"}
    for bad, encoded in PATH_POISON.items():
        for target in placeholders:
            url = template
            for name in placeholders:
                url = url.replace("{" + name + "}", names[name] + (encoded if name == target else ""))
            yield method, url, body, f"path {target}"
        url = template
        for name in placeholders:
            url = url.replace("{" + name + "}", names[name])
        for target in query:
            qs = "&".join(f"{k}={v}{encoded if k == target else ''}" for k, v in query.items())
            yield method, f"{url}?{qs}", body, f"query {target}"
        if body is not None:
            for path, is_key in _leaves(body):
                yield method, url, _poisoned(body, path, is_key, bad), f"body {'key' if is_key else 'value'} {path}"


def _sweep(base: str) -> tuple[int, dict[str, int]]:
    """Send every variant; returns how many were sent and the status counts."""
    sent = 0
    counts: dict[str, int] = {}
    with httpx.Client(base_url=base, timeout=30) as http:
        version = str(http.get(f"{V4}/quick/versions").json()["result"][0]["id"])
        for method, template, body in _operations():
            for verb, url, payload, what in _variants(method, template, body, version):
                response = _send(http, verb, url, payload)
                sent += 1
                counts[str(response.status_code)] = counts.get(str(response.status_code), 0) + 1
                assert response.status_code < 500, f"{verb} {url} with {what}: {response.text}"
                if response.headers.get("content-type", "").startswith("text/event-stream"):
                    assert response.status_code == 200  # .../subscribe: the stream, not an envelope
                else:
                    response.json()  # always a well-formed envelope
                if what.startswith("body") and SURROGATE in json.dumps(payload, ensure_ascii=False):
                    assert response.status_code == 400, f"{verb} {url} with {what}: {response.text}"
    return sent, counts


def test_rest_over_http(server: str) -> None:
    """One server per backend (a PostgreSQL database costs seconds): named fields, the cron, then the sweep."""
    for method, path, body, field in NAMED_FIELDS:
        _names_the_field(server, method, path, body, field)
    _refuses_an_invalid_cron(server)
    sent, counts = _sweep(server)
    assert sent > 300, (sent, counts)
