"""Following an instance's event stream in the terminal: ``trigger --wait`` and ``workflows instances watch``.

One line per event worth seeing (every attempt and its error, every retry with its delay, sleeps, waits, pauses,
the end), each with the time elapsed since the first event shown; on a terminal a rich spinner below them says
what the instance is doing now. Piped, the same lines are plain text and there is no spinner.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from rich.console import Console
from rich.status import Status

from stepstone.cli.backend import Backend, Doc
from stepstone.cli.output import echo, status_label
from stepstone.durations import format_millis

QUEUED_HINT_S = 5.0


def _ms(value: object) -> str:
    return format_millis(float(value)) if isinstance(value, int | float) else "?"


def _error(ev: Doc) -> str:
    err = ev.get("error") or {}
    return f"{err.get('name', 'Error')}: {err.get('message', '')}"


class Narrator:
    """Turns events into lines and the spinner's text; remembers start times to tell durations."""

    def __init__(self) -> None:
        self.first: float | None = None
        self.started: dict[str, float] = {}
        self.activity = "waiting for the first event"
        self.last_type = ""

    def line(self, ev: Doc) -> str | None:
        """The line for one event (None: nothing worth a line), and update what the spinner says."""
        kind = str(ev.get("type"))
        ts = float(ev.get("timestamp") or 0)
        if self.first is None:
            self.first = ts
        self.last_type = kind
        name = ev.get("stepName")
        text = self._text(kind, ev, name, ts)
        if text is None:
            return None
        return f"+{(ts - self.first) / 1000:8.3f}s  {text}"

    def _text(self, kind: str, ev: Doc, name: object, ts: float) -> str | None:
        if kind == "workflow_queued":
            self.activity = "queued: waiting for a worker"
            return "⏳ queued"
        if kind == "workflow_running":
            self.activity = "running"
            return "▶ running"
        if kind == "workflow_waiting_for_pause":
            self.activity = "pausing: waiting for in-flight steps"
            return "⏸ pause requested: waiting for in-flight steps"
        if kind == "workflow_paused":
            self.activity = "paused (resume it to go on)"
            return status_label("paused")
        if kind in ("workflow_completed", "workflow_errored", "workflow_terminated"):
            return status_label(
                {"workflow_completed": "complete", "workflow_errored": "errored"}.get(kind, "terminated")
            )
        if kind == "step_started":
            self.started[f"step:{name}"] = ts
            return None
        if kind == "attempt_started":
            self.started[f"attempt:{name}"] = ts
            self.activity = f'step "{name}" attempt {ev.get("attempt")}'
            return f'🎯 step "{name}" attempt {ev.get("attempt")}' if int(ev.get("attempt") or 1) > 1 else None
        if kind == "attempt_errored":
            took = ts - self.started.get(f"attempt:{name}", ts)
            retry = f"; retrying in {_ms(ev['retryDelayMs'])}" if "retryDelayMs" in ev else ""
            if retry:
                self.activity = f'step "{name}": retry in {_ms(ev["retryDelayMs"])}'
            return f'❌ step "{name}" attempt {ev.get("attempt")} failed in {_ms(took)}: {_error(ev)}{retry}'
        if kind == "step_completed":
            took = ts - self.started.get(f"step:{name}", ts)
            return f'✅ step "{name}" completed in {_ms(took)}'
        if kind == "step_errored":
            return f'❌ step "{name}" failed'
        if kind == "sleep_started":
            self.activity = f'sleeping "{name}" for {_ms(ev.get("durationMs"))}'
            return f'💤 sleeping "{name}" for {_ms(ev.get("durationMs"))}'
        if kind == "sleep_completed":
            return f'⏰ slept "{name}"'
        if kind == "wait_started":
            self.activity = f'waiting for event "{ev.get("eventType")}" (step "{name}")'
            return f'👀 waiting for event "{ev.get("eventType")}" (step "{name}")'
        if kind == "wait_completed":
            return f'📩 step "{name}" received its event'
        if kind == "wait_timed_out":
            return f'⌛ step "{name}" timed out waiting for its event'
        return None


async def watch(backend: Backend, name: str, instance_id: str, *, quiet: bool = False) -> Doc:
    """Follow the instance's events until it finishes, printing them (unless ``quiet``); returns the final
    instance document, after printing its error (with the traceback) and its output."""
    console = Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)
    narrator = Narrator()
    spinner: Status | None = console.status("waiting for the first event") if console.is_terminal else None
    began = time.monotonic()

    async def tick() -> None:
        hinted = False
        while True:
            await asyncio.sleep(0.1)
            elapsed = time.monotonic() - began
            if spinner is not None:
                spinner.update(f"{narrator.activity}  ({elapsed:.1f}s)")
            if not hinted and narrator.last_type == "workflow_queued" and elapsed > QUEUED_HINT_S:
                hinted = True
                console.print("  still queued: is `stepstone dev` or `stepstone worker` running on this database?")

    ticker = asyncio.create_task(tick()) if not quiet else None
    if spinner is not None and not quiet:
        spinner.start()
    try:
        events: AsyncIterator[Doc] = backend.subscribe(name, instance_id)
        async for ev in events:
            line = narrator.line(ev)
            if line is not None and not quiet:
                console.print(line)
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        if spinner is not None:
            spinner.stop()
    doc = await backend.describe_instance(name, instance_id)
    if not quiet:
        error: dict[str, Any] | None = doc.get("error")
        if error:
            console.print(f"Error: {error.get('name')}: {error.get('message')}")
            if error.get("traceback"):
                console.print(str(error["traceback"]).rstrip())
        echo(json.dumps(doc.get("output"), ensure_ascii=False, default=str))
    return doc


def carry_on_message(name: str, instance_id: str) -> str:
    """What Ctrl-C prints: the instance is not stopped by it."""
    return (
        f'Stopped watching. Instance "{instance_id}" carries on in its worker; watch it again with '
        f"`stepstone workflows instances watch {name} {instance_id}`, stop it with "
        f"`stepstone workflows instances terminate {name} {instance_id}`."
    )
