"""Logs: one line per instance event worth seeing, the instance on every record, quiet replays, text or JSON.

:class:`LogObserver` writes the engine's lines on the ``stepstone.instance`` logger at INFO (created, a step
completed or failed with its duration, a retry with its delay, sleeping until, waiting for an event, completed,
errored). :func:`setup_logging` installs one stderr handler whose :class:`InstanceFilter` stamps every record
made inside a run with its workflow and instance id and drops records made while the run is replaying;
:class:`InstanceStdout` does the same for ``print()``. ``docs/observe.md`` says exactly what holds.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from stepstone.models import Claim, InstanceRecord, StepRecord
from stepstone.observe.observer import Observer, first_run
from stepstone.run_state import RunState, current_run

LEVELS: Final[tuple[str, ...]] = ("debug", "info", "warning", "error")
FORMATS: Final[tuple[str, ...]] = ("text", "json")

instance_log = logging.getLogger("stepstone.instance")

_FIELDS: Final[tuple[str, ...]] = (
    "event",
    "step",
    "attempt",
    "duration_ms",
    "delay_ms",
    "until",
    "event_type",
    "error",
    "trigger",
)
"""Structured fields the engine's lines carry (``extra=``); the JSON format prints them as keys."""


def duration_text(seconds: float) -> str:
    """``0.0123`` → ``12ms``, ``75`` → ``1m 15s``."""
    if seconds < 1:
        return f"{max(seconds, 0) * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h {minutes}m"
    return f"{hours // 24}d {hours % 24}h"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _step_label(step: StepRecord) -> str:
    return f'"{step.name}"' if step.count == 1 else f'"{step.name}" #{step.count}'


class LogObserver(Observer):
    """Writes one INFO line per instance event worth seeing on ``stepstone.instance``."""

    def __init__(self, logger: logging.Logger = instance_log) -> None:
        self.log = logger

    def _emit(self, level: int, workflow: str, instance_id: str, message: str, **fields: Any) -> None:
        if self.log.isEnabledFor(level):
            self.log.log(level, message, extra={"workflow": workflow, "instance_id": instance_id, **fields})

    def instances_created(self, records: Sequence[InstanceRecord], *, now: float) -> None:
        for r in records:
            self._emit(
                logging.INFO, r.workflow, r.id, f"created (trigger {r.trigger_source})", event="created",
                trigger=r.trigger_source,
            )  # fmt: skip

    def run_started(self, claim: Claim, *, now: float) -> None:
        inst = claim.instance
        started = "started" if first_run(inst) else "resumed"
        self._emit(logging.DEBUG, inst.workflow, inst.id, started, event="run_started")

    def run_finished(self, claim: Claim, outcome: str, *, now: float, error: tuple[str, str] | None) -> None:
        inst = claim.instance
        took = now - inst.created_on
        if outcome == "complete":
            self._emit(
                logging.INFO, inst.workflow, inst.id, f"completed in {duration_text(took)}", event="completed",
                duration_ms=round(took * 1000, 3),
            )  # fmt: skip
        elif outcome == "errored":
            name, message = error or ("Error", "")
            self._emit(
                logging.INFO, inst.workflow, inst.id, f"errored after {duration_text(took)}: {name}: {message}",
                event="errored", duration_ms=round(took * 1000, 3), error=f"{name}: {message}",
            )  # fmt: skip
        elif outcome == "terminated":  # a terminate(rollback=True) that this run rolled back
            self._emit(
                logging.INFO, inst.workflow, inst.id, f"terminated after rolling back, {duration_text(took)} after "
                "it was created", event="terminated", duration_ms=round(took * 1000, 3),
            )  # fmt: skip
        else:
            self._emit(logging.DEBUG, inst.workflow, inst.id, f"run ended: {outcome}", event=f"run_{outcome}")

    def instance_terminated(self, record: InstanceRecord, *, now: float) -> None:
        took = now - record.created_on
        self._emit(
            logging.INFO, record.workflow, record.id, f"terminated {duration_text(took)} after it was created",
            event="terminated", duration_ms=round(took * 1000, 3),
        )  # fmt: skip

    def step_written(self, state: RunState, step: StepRecord) -> None:
        if not self.log.isEnabledFor(logging.INFO):
            return
        wf, iid, label = state.workflow, state.instance_id, _step_label(step)
        if step.kind == "do":
            att = step.attempts[-1] if step.attempts else None
            took = (att.end or 0) - att.start if att is not None else 0.0
            n = len(step.attempts)
            if step.status == "success":
                after = f" (attempt {n})" if n > 1 else ""
                self._emit(
                    logging.INFO, wf, iid, f"step {label} completed in {duration_text(took)}{after}",
                    event="step_completed", step=step.name, attempt=n, duration_ms=round(took * 1000, 3),
                )  # fmt: skip
            elif step.status == "retrying" and att is not None and step.wake_at is not None:
                delay = max(step.wake_at - (att.end or step.wake_at), 0.0)
                err = f"{att.error_name}: {att.error_message}"
                self._emit(
                    logging.INFO, wf, iid,
                    f"step {label} attempt {n} failed in {duration_text(took)}: {err}; "
                    f"retrying in {duration_text(delay)}",
                    event="step_retrying", step=step.name, attempt=n, duration_ms=round(took * 1000, 3),
                    delay_ms=round(delay * 1000, 3), error=err,
                )  # fmt: skip
            elif step.status == "error":
                err = f"{step.error_name}: {step.error_message}"
                self._emit(
                    logging.INFO, wf, iid, f"step {label} failed in {duration_text(took)} (attempt {n}): {err}",
                    event="step_failed", step=step.name, attempt=n, duration_ms=round(took * 1000, 3), error=err,
                )  # fmt: skip
        elif step.kind == "sleep":
            if step.status == "waiting" and step.wake_at is not None:
                self._emit(
                    logging.INFO, wf, iid,
                    f"sleeping {label} until {_iso(step.wake_at)} "
                    f"({duration_text(step.wake_at - step.started_at)})",
                    event="sleeping", step=step.name, until=_iso(step.wake_at),
                )  # fmt: skip
            elif step.status == "success":
                self._emit(logging.DEBUG, wf, iid, f"woke from sleep {label}", event="slept", step=step.name)
        elif step.kind == "wait":
            if step.status == "waiting" and step.wake_at is not None:
                self._emit(
                    logging.INFO, wf, iid,
                    f'waiting {label} for event "{step.event_type}" until {_iso(step.wake_at)}',
                    event="waiting", step=step.name, event_type=step.event_type, until=_iso(step.wake_at),
                )  # fmt: skip
            elif step.status == "success":
                self._emit(
                    logging.INFO, wf, iid, f'step {label} received event "{step.event_type}"',
                    event="event_received", step=step.name, event_type=step.event_type,
                )  # fmt: skip
            elif step.status == "timeout":
                self._emit(
                    logging.INFO, wf, iid, f'step {label} timed out waiting for event "{step.event_type}"',
                    event="wait_timed_out", step=step.name, event_type=step.event_type,
                )  # fmt: skip


class InstanceFilter(logging.Filter):
    """Stamps records made inside a run with ``workflow`` and ``instance_id``; drops those made while the run
    replays (before its first live step), so code outside steps logs once per live pass, not once per replay."""

    def filter(self, record: logging.LogRecord) -> bool:
        state = current_run.get()
        if state is not None:
            if state.replaying:
                return False
            if getattr(record, "workflow", None) is None:
                record.workflow = state.workflow
                record.instance_id = state.instance_id
        return True


class TextFormatter(logging.Formatter):
    """``09:01:02 INFO  onboarding/user-1 step "fetch" completed in 12ms``; engine lines name their logger."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        workflow = getattr(record, "workflow", None)
        where = f"{workflow}/{record.instance_id}" if workflow is not None else record.name  # type: ignore[attr-defined]
        if workflow is not None and record.name not in ("stepstone.instance", "root"):
            where += f" {record.name}"
        line = f"{when} {record.levelname:<5} {where}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, ``workflow``, ``instance_id`` and
    the structured fields of the engine's lines (``event``, ``step``, ``attempt``, ``duration_ms``, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if getattr(record, "workflow", None) is not None:
            out["workflow"] = record.workflow  # type: ignore[attr-defined]
            out["instance_id"] = record.instance_id  # type: ignore[attr-defined]
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


_HANDLER_MARK = "_stepstone_handler"


def setup_logging(level: str = "warning", fmt: str = "text", stream: TextIO | None = None) -> logging.Handler:
    """Log at ``level`` (debug, info, warning, error) on stderr in ``fmt`` (text or json), replacing a handler
    an earlier call installed. Libraries' own chatter (uvicorn, httpx) stays at WARNING unless ``debug``."""
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format {fmt!r}: expected text or json")
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    setattr(handler, _HANDLER_MARK, True)
    handler.addFilter(InstanceFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in ("uvicorn", "uvicorn.error", "httpx", "httpcore", "asyncio"):
        logging.getLogger(name).setLevel(quiet)
    return handler


class InstanceStdout(io.TextIOBase):
    """``sys.stdout`` for a worker process: ``print()`` inside a run gets a ``[workflow/instance]`` prefix
    on each line and is dropped while the run replays; prints outside any run pass through unchanged."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._line_start = True

    def write(self, text: str) -> int:
        state = current_run.get()
        if state is None:
            self._line_start = text.endswith("\n") or (self._line_start and not text)
            return self.stream.write(text)
        if state.replaying:
            return len(text)
        prefix = f"[{state.workflow}/{state.instance_id}] "
        parts = text.split("\n")
        out: list[str] = []
        for i, part in enumerate(parts):
            if part and (self._line_start or i > 0):
                out.append(prefix)
            out.append(part)
            if i < len(parts) - 1:
                out.append("\n")
        if text:
            self._line_start = text.endswith("\n")
        self.stream.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self.stream.encoding

    def writable(self) -> bool:
        return True


def install_stdout() -> None:
    """Wrap ``sys.stdout`` in :class:`InstanceStdout` (``stepstone dev`` and ``worker`` do; a library embedding
    the engine keeps its own stdout)."""
    if not isinstance(sys.stdout, InstanceStdout):
        sys.stdout = InstanceStdout(sys.stdout)
