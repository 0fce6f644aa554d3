"""A property-based run of the REST API from its own OpenAPI document (schemathesis): no input gets a 5xx,
and every response matches the documented schema (envelope, fields, status codes, content type).

Bounded to stay well under a minute: a few examples per operation, twice (names as generated, and names pinned
to a workflow and an instance that exist, so the handlers past the 404 are reached too).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stepstone.server.openapi import openapi_document
from tests.server_process import running_server

schema = schemathesis.openapi.from_dict(openapi_document())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
AUTH = {"Authorization": "Bearer fuzz"}
FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("fuzz")) as base:
        yield base


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    # one client: building one per request costs an SSL context each time
    with httpx.Client(headers=AUTH) as client:
        yield client


def _setup(http: httpx.Client, base: str) -> None:
    v4 = f"{base}/client/v4/accounts/local/workflows"
    http.put(f"{v4}/fuzz", json={"class_name": "Fuzz", "script_name": "fuzz"}).raise_for_status()
    http.post(f"{v4}/fuzz/instances", json={"instance_id": "known"})
    http.post(f"{v4}/quick/instances", json={"instance_id": "known"})


def _call(case: Any, base: str) -> None:
    response = case.call_and_validate(base_url=base, headers=AUTH, checks=CHECKS)
    assert response.status_code < 500


@schema.parametrize()
@FUZZ
def test_generated_requests(case: Any, server: str) -> None:
    _call(case, server)


@schema.parametrize()
@FUZZ
def test_generated_requests_on_existing_names(case: Any, server: str, http: httpx.Client) -> None:
    _setup(http, server)
    params = case.path_parameters or {}
    if "workflow_name" in params:
        params["workflow_name"] = "quick" if case.method == "GET" else "fuzz"
    if "instance_id" in params:
        params["instance_id"] = "known"
    if "account_id" in params:
        params["account_id"] = "local"
    _call(case, server)
