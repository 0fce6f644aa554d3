"""Headless Chromium for the dashboard tests: Debian's ``chromium`` driven by Playwright for Python.

Nothing is downloaded: Playwright launches the system browser (``executable_path``). With no browser (or no
Playwright) the browser tests skip with a message saying what to install, unless ``CI`` is set, where that is a
failure (``.ci/run`` installs chromium when it is missing).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "img"


def chromium_path() -> str | None:
    """The system Chromium, if installed."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and the dashboard's browser tests cannot run: {reason}")
    pytest.skip(f"dashboard browser tests skipped: {reason}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the browser tests (all in one module).

    Module-scoped rather than session-scoped: Playwright's sync API keeps an event loop running in this thread
    while it is open, and the asyncio tests that follow need the thread to themselves."""
    executable = chromium_path()
    if executable is None:
        _unavailable("no chromium on PATH (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (scripts/setup installs the dev extra)")
    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=executable, headless=True, args=["--no-sandbox"])
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser context (no cookies) and page at 1280 × 800; dialogs (confirm) are accepted."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, timezone_id="UTC")
    context.set_default_timeout(20_000)
    tab = context.new_page()
    tab.on("dialog", lambda dialog: dialog.accept())
    try:
        yield tab
    finally:
        context.close()


def screenshot(page: Any, name: str) -> None:
    """Save the viewport as ``docs/img/dashboard-<name>.png`` (the docs show these)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"dashboard-{name}.png"))
