"""The dashboard in a real browser: headless Chromium against a real server process (engine, worker, REST API
and dashboard over a SQLite file). Each test waits for what it expects with generous timeouts; none times
anything. The screenshots in docs/img/ are made here."""

from __future__ import annotations

import itertools
import re
import time
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
    streams: list[str] = []
    page.on("request", lambda r: streams.append(r.resource_type) if "fragment=stream" in r.url else None)
    page.goto(f"{server}{UI}/waiter/instances/live-1")
    expect(page.locator(".step-row", has_text="approval-1")).to_be_visible(timeout=30_000)
    assert "eventsource" in streams, streams  # the page follows the instance's event stream
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


def test_the_live_channel_relays_the_event_stream(server: str) -> None:
    """``?fragment=stream``: server-sent ``change`` notices as the instance's events are committed, ending with
    ``end`` after the terminal event; a finished instance answers 204 (an EventSource does not reconnect)."""
    create(server, "waiter", "stream-1")
    url = f"{server}{UI}/waiter/instances/stream-1?fragment=stream"
    seen: list[str] = []
    with httpx.stream("GET", url, timeout=60) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            seen.append(line)
            if line.startswith("data:") and "wait_started" in line and not any("sent" in s for s in seen):
                sent = httpx.post(f"{server}{V4}/waiter/instances/stream-1/events/approval", json={"ok": 1})
                assert sent.status_code == 200, sent.text
                seen.append("sent")
            if line == "event: end":
                break
    assert seen[0] == ": stepstone live"
    after = seen[seen.index("sent") :]
    assert "event: change" in after
    assert any(line.startswith("data:") and "workflow_completed" in line for line in after), seen
    assert httpx.get(url).status_code == 204


def test_docs_show_the_screenshots() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "dashboard.md").read_text()
    for name in ("workflows", "instances", "instance"):
        assert f"img/dashboard-{name}.png" in docs


def wait_status(base: str, workflow: str, instance_id: str, status: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = httpx.get(f"{base}{V4}/{workflow}/instances/{instance_id}")
        if answer.status_code == 200 and answer.json()["result"]["status"] == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"{workflow}/{instance_id} did not become {status!r} in {timeout} s")


# A 10,000-step page renders in well under a second on a quiet machine, but a busy one can take much longer:
# waits on what the page shows allow for that (what it shows is what the test checks, not how fast).
LOADED_MS = 30_000

OVERFLOW = """() => ({
    page: document.documentElement.scrollWidth - document.documentElement.clientWidth,
    body: document.body.scrollWidth - document.body.clientWidth,
    wide: [...document.querySelectorAll("main *")]
        .filter((e) => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1
                       && !e.closest(".scroll, pre"))
        .slice(0, 5).map((e) => e.tagName + "." + e.className + " " + Math.round(e.getBoundingClientRect().right)),
})"""


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    """A page at a phone's width (390 × 844 CSS px, touch)."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, timezone_id="UTC")
    context.set_default_timeout(20_000)
    tab = context.new_page()
    tab.on("dialog", lambda dialog: dialog.accept())
    try:
        yield tab
    finally:
        context.close()


def test_phone_width_nothing_overflows_the_page(server: str, phone: Any) -> None:
    from playwright.sync_api import expect

    create(server, "waiter", "phone-waiting-for-its-approval-event-with-a-long-id", {"order": 7})
    create(server, "failing", "phone-failed")
    wait_status(server, "waiter", "phone-waiting-for-its-approval-event-with-a-long-id", "waiting")
    wait_status(server, "failing", "phone-failed", "errored")
    pages = {
        "workflows": f"{server}{UI}",
        "instances": f"{server}{UI}/waiter",
        "instances, filtered": f"{server}{UI}/waiter?status=waiting",
        "instance, waiting": f"{server}{UI}/waiter/instances/phone-waiting-for-its-approval-event-with-a-long-id",
        "instance, errored": f"{server}{UI}/failing/instances/phone-failed",
    }
    for label, url in pages.items():
        phone.goto(url)
        expect(phone.locator("h1")).to_be_visible()
        overflow = phone.evaluate(OVERFLOW)
        assert overflow["page"] <= 0 and overflow["body"] <= 0, (label, overflow)
        assert overflow["wide"] == [], (label, overflow)
    # The instance page at phone width: its actions and timeline rows are on screen and usable.
    phone.goto(pages["instance, waiting"])
    expect(phone.locator("#action-pause")).to_be_in_viewport()
    row = phone.locator(".step-row", has_text="prepare-1")
    row.locator("summary").tap()
    expect(row.locator(".attempts")).to_contain_text("first attempt fails")
    assert phone.evaluate(OVERFLOW)["page"] <= 0
    # Nothing on it is cut off or drawn over: step labels wrap instead of ending in "…", axis labels don't overlap.
    clipped = phone.evaluate(
        "[...document.querySelectorAll('.row .label')].filter((e) => e.scrollWidth > e.clientWidth).length"
    )
    assert clipped == 0
    ticks = phone.evaluate(
        """[...document.querySelectorAll('.axis .tick')].map((e) => e.getBoundingClientRect())
           .filter((r) => r.width > 0).map((r) => [r.left, r.right])"""
    )
    assert len(ticks) >= 2 and all(a[1] <= b[0] for a, b in itertools.pairwise(ticks)), ticks
    screenshot(phone, "instance-phone")


def _focus(page: Any) -> str:
    """What has the keyboard focus: ``tag#id`` or ``tag: text``."""
    return str(
        page.evaluate(
            """() => { const e = document.activeElement;
                       return e.tagName.toLowerCase() + (e.id ? "#" + e.id : ": " + e.textContent.trim()); }"""
        )
    )


def tab_to(page: Any, wanted: str, limit: int = 120) -> list[str]:
    """Press Tab until the focus is on ``wanted`` (as :func:`_focus` names it); the focus order passed through."""
    seen = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        seen.append(_focus(page))
        if seen[-1] == wanted or seen[-1].startswith(wanted):
            return seen
    raise AssertionError(f"Tab never reached {wanted!r}; focus went through {seen}")


def test_keyboard_reaches_and_triggers_the_actions(server: str, page: Any) -> None:
    from playwright.sync_api import expect

    url = f"{server}{UI}/waiter/instances/keys-1"
    create(server, "waiter", "keys-1")
    wait_status(server, "waiter", "keys-1", "waiting")
    page.goto(url)
    expect(page.locator("#instance-status")).to_have_text("waiting")
    # The first Tab is the skip link; Enter on it moves on to the content.
    page.keyboard.press("Tab")
    assert _focus(page) == "a: Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("location.hash") == "#main"
    # Pause with the keyboard alone; the focused button shows a focus ring.
    tab_to(page, "button#action-pause")
    ring = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert ring not in ("", "none"), ring
    page.keyboard.press("Enter")
    expect(page.locator(".flash.notice")).to_contain_text("pause")
    expect(page.locator("#instance-status")).to_have_text("paused", timeout=30_000)
    # Resume, from the top of the page again.
    page.locator("body").focus()
    page.evaluate("document.activeElement.blur()")
    tab_to(page, "button#action-resume")
    page.keyboard.press("Enter")
    expect(page.locator("#instance-status")).to_have_text("waiting", timeout=30_000)
    # A step's details open with Enter; its "Restart from here" is the next stop.
    passed = tab_to(page, "summary: Details of prepare-1")
    assert "button#action-terminate" in passed  # every action comes before the timeline
    page.keyboard.press("Enter")
    expect(page.locator(".step-row", has_text="prepare-1").locator(".attempts")).to_be_visible()
    page.keyboard.press("Tab")
    assert _focus(page).startswith("button: Restart from here")
    # Send the event with the keyboard: type, Tab, payload, Tab, Enter.
    tab_to(page, "input#event-type")
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type("approval")
    page.keyboard.press("Tab")
    assert _focus(page) == "textarea#event-payload"
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type('{"by": "keyboard"}')
    page.keyboard.press("Tab")
    assert _focus(page) == "button#send-event-button"
    page.keyboard.press("Enter")
    expect(page.locator("#instance-status")).to_have_text("complete", timeout=30_000)
    expect(page.locator("#instance-output")).to_contain_text('"by": "keyboard"')


def test_keyboard_filters_and_triggers_on_the_instances_page(server: str, page: Any) -> None:
    from playwright.sync_api import expect

    page.goto(f"{server}{UI}/quick")
    expect(page.get_by_role("heading", name="quick")).to_be_visible()
    # The trigger form: Enter on its summary opens it, then id, params and the button by Tab.
    tab_to(page, "summary: Trigger an instance")
    page.keyboard.press("Enter")
    page.keyboard.press("Tab")
    assert _focus(page) == "input#trigger-id"
    page.keyboard.type("typed-1")
    page.keyboard.press("Tab")
    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type('{"k": 1}')
    page.keyboard.press("Tab")
    assert _focus(page) == "button: Trigger"
    page.keyboard.press("Enter")
    expect(page.locator("h1")).to_have_text("typed-1")
    expect(page.locator("#instance-status")).to_have_text("complete", timeout=30_000)
    # Back on the list, the status strip's links are reachable and filter with Enter.
    page.goto(f"{server}{UI}/quick")
    tab_to(page, "a: complete")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"status=complete"))
    expect(page.locator("#rows tbody")).to_contain_text("typed-1")


def test_a_10000_step_instance_renders_one_page_of_rows(server: str, page: Any) -> None:
    from playwright.sync_api import expect

    create(server, "many", "ten-thousand", {"steps": 10_000})
    wait_status(server, "many", "ten-thousand", "complete", timeout=240)
    page.goto(f"{server}{UI}/many/instances/ten-thousand")
    expect(page.locator("#steps-h")).to_contain_text("10000", timeout=LOADED_MS)
    rows = page.locator(".step-row")
    expect(rows).to_have_count(200, timeout=LOADED_MS)
    expect(rows.first).to_contain_text("s0-1")
    expect(rows.last).to_contain_text("s199-1")
    pager = page.get_by_role("navigation", name="Step pages")
    expect(pager).to_contain_text("steps 1–200 of 10000 (page 1 of 50)")
    assert page.evaluate(OVERFLOW)["page"] <= 0
    pager.get_by_role("link", name="Later steps →").click()
    expect(pager).to_contain_text("steps 201–400 of 10000 (page 2 of 50)", timeout=LOADED_MS)
    expect(rows).to_have_count(200, timeout=LOADED_MS)
    expect(rows.first).to_contain_text("s200-1")
    page.goto(f"{server}{UI}/many/instances/ten-thousand?steps_page=50")
    expect(rows).to_have_count(200, timeout=LOADED_MS)
    expect(rows.last).to_contain_text("s9999-1")
