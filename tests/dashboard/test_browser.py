"""The dashboard in a real browser: headless Chromium against a real server process (engine, worker, REST API
and dashboard over a SQLite file). Each test waits for what it expects with generous timeouts; none times
anything. The screenshots in docs/img/ are made here."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dashboard.conftest import screenshot
from tests.server_process import running_server

V4 = "/client/v4/accounts/local/workflows"
UI = "/accounts/local/workflows"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("dashboard")) as base:
        yield base


def create(base: str, workflow: str, instance_id: str, params: Any = None) -> None:
    answer = httpx.post(f"{base}{V4}/{workflow}/instances", json={"instance_id": instance_id, "params": params or {}})
    assert answer.status_code == 200, answer.text


def test_instances_filter_open_live_send_event(server: str, page: Any) -> None:
    from playwright.sync_api import expect

    for i in range(3):
        create(server, "quick", f"quick-{i}", {"n": i})
    create(server, "failing", "failing-1")
    page.goto(server + "/")
    expect(page.get_by_role("heading", name="Workflows")).to_be_visible()
    expect(page.get_by_role("link", name="waiter")).to_be_visible()
    screenshot(page, "workflows")

    create(server, "waiter", "approve-me", {"order": 42})
    create(server, "waiter", "other-1")
    page.get_by_role("link", name="waiter").click()
    expect(page.get_by_role("heading", name="waiter")).to_be_visible()
    # The status strip filters: both instances end up waiting for their event.
    waiting = page.locator("#rows a.badge.waiting")
    expect(waiting).to_contain_text("2", timeout=30_000)
    waiting.click()
    expect(page.locator("#rows tbody tr")).to_have_count(2)
    expect(page.locator("#rows tbody")).to_contain_text("approve-me")
    screenshot(page, "instances")

    page.get_by_role("link", name="approve-me").click()
    expect(page.locator("#instance-status")).to_have_text("waiting")
    expect(page.locator("#why")).to_contain_text("approval")
    expect(page.locator(".step-row", has_text="prepare-1")).to_contain_text("2 attempts")
    expect(page.locator(".step-row", has_text="approval-1")).to_be_visible()
    # Sending the event from the page: the instance completes and its last step appears without a reload.
    page.locator("#event-type").fill("approval")
    page.locator("#event-payload").fill('{"ok": true}')
    page.locator("#send-event-button").click()
    expect(page.locator(".flash.notice")).to_contain_text("sent event")
    expect(page.locator("#instance-status")).to_have_text("complete", timeout=30_000)
    secret = page.locator(".step-row", has_text="secret-1")
    expect(secret).to_be_visible()
    page.evaluate("window.scrollTo(0, 0)")
    screenshot(page, "instance")
    secret.locator("summary").click()
    expect(secret.locator("pre.json").first).to_contain_text("[REDACTED]")
    expect(page.locator("#instance-output")).to_contain_text('"secret_len": 6')


def test_steps_appear_live_and_restart_from_a_step(server: str, page: Any) -> None:
    from playwright.sync_api import expect

    create(server, "waiter", "live-1")
    page.goto(f"{server}{UI}/waiter/instances/live-1")
    expect(page.locator(".step-row", has_text="approval-1")).to_be_visible(timeout=30_000)
    # An event sent elsewhere (REST): the page follows without a reload.
    sent = httpx.post(f"{server}{V4}/waiter/instances/live-1/events/approval", json={"ok": 1})
    assert sent.status_code == 200, sent.text
    expect(page.locator("#instance-status")).to_have_text("complete", timeout=30_000)
    expect(page.locator(".step-row", has_text="secret-1")).to_be_visible()
    # Restart from the event wait: the steps before it are kept, the wait runs again.
    row = page.locator(".step-row", has_text="approval-1")
    row.get_by_role("button", name=re.compile("Restart from here")).click()
    expect(page.locator(".flash.notice")).to_contain_text("restarted from step 'approval'")
    expect(page.locator("#instance-status")).to_have_text("waiting", timeout=30_000)
    expect(page.locator(".step-row", has_text="secret-1")).to_have_count(0)
    expect(page.locator(".step-row", has_text="prepare-1")).to_contain_text("complete")


def test_docs_show_the_screenshots() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "dashboard.md").read_text()
    for name in ("workflows", "instances", "instance"):
        assert f"img/dashboard-{name}.png" in docs
