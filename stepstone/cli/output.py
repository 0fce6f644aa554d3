"""What the CLI prints: wrangler's emoji and labels, labelled values, box tables, dates and durations."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import click

STATUS_EMOJI: Final[dict[str, str]] = {
    "complete": "✅ Completed",
    "errored": "❌ Errored",
    "paused": "⏸️ Paused",
    "queued": "⌛ Queued",
    "rollingBack": "↩️ Rolling Back",
    "running": "▶ Running",
    "terminated": "🚫 Terminated",
    "waiting": "⏰ Waiting",
    "waitingForPause": "⏱️ Waiting for Pause",
}
TRIGGER_EMOJI: Final[dict[str, str]] = {
    "api": "🌎 API",
    "binding": "🔗 Binding",
    "cron": "⌛ Cron",
    "event": "📩 Event",
}
STEP_EMOJI: Final[dict[str, str]] = {
    "rollback": "↩️ Rollback",
    "step": "🎯 Step",
    "sleep": "💤 Sleeping",
    "termination": "🚫 Termination",
    "waitForEvent": "👀 Waiting for event",
}
STATUSES: Final[tuple[str, ...]] = (
    "queued",
    "running",
    "paused",
    "errored",
    "terminated",
    "complete",
    "waiting",
    "waitingForPause",
)


def status_label(status: str | None) -> str:
    """``complete`` → ``✅ Completed``; anything unknown → ``❓ Unknown``."""
    return STATUS_EMOJI.get(status or "", "❓ Unknown")


def trigger_label(source: str | None) -> str:
    """``api`` → ``🌎 API``."""
    return TRIGGER_EMOJI.get(source or "", "❓ Unknown")


def step_label(kind: str | None) -> str:
    """``step`` → ``🎯 Step``."""
    return STEP_EMOJI.get(kind or "", "❓ Unknown")


def parse_ts(value: object) -> datetime | None:
    """An ISO timestamp (``...Z``) or epoch seconds as an aware datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def local_time(value: object) -> str:
    """A timestamp as a local date and time, the way wrangler prints ``toLocaleString()``; empty if unset."""
    ts = parse_ts(value)
    if ts is None:
        return ""
    return ts.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def distance(start: object, end: object | None = None) -> str:
    """date-fns ``formatDistanceStrict`` (``3 seconds``, ``1 minute``, ``5 days``), or ``12 ms`` under a second;
    to now if there is no end."""
    a = parse_ts(start)
    if a is None:
        return ""
    b = parse_ts(end) or datetime.now(UTC)
    seconds = abs((b - a).total_seconds())
    for unit, size in (("year", 365 * 86400), ("month", 30 * 86400), ("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = round(seconds / size)
            return f"{n} {unit}{'' if n == 1 else 's'}"
    if seconds < 1:  # date-fns would say "0 seconds"; milliseconds say more about a step
        return f"{round(seconds * 1000)} ms"
    n = round(seconds)
    return f"{n} second{'' if n == 1 else 's'}"


def width(text: str) -> int:
    """Columns a string takes in a terminal (wide emoji count 2, variation selectors 0)."""
    total = 0
    for ch in text:
        if unicodedata.combining(ch) or ch in "\ufe0f\u200d":
            continue
        total += 2 if unicodedata.east_asian_width(ch) in "WF" else 1
    return total


def pad(text: str, columns: int) -> str:
    """Left-align ``text`` in ``columns``."""
    return text + " " * max(0, columns - width(text))


def labelled(pairs: Sequence[tuple[str, object]], indent: str = "") -> str:
    """wrangler's ``formatLabelledValues``: ``Label:`` then values aligned at a common column, 2-space gap."""
    rows = [(f"{label}:", "" if value is None else str(value)) for label, value in pairs]
    col = max((width(label) for label, _ in rows), default=0) + 2
    lines = []
    for label, value in rows:
        first, *rest = value.split("\n") or [""]
        lines.append(f"{indent}{pad(label, col)}{first}".rstrip())
        lines.extend(f"{indent}{' ' * col}{line}" for line in rest)
    return "\n".join(lines)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A box-drawn table like wrangler's ``logger.table``."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(width(row[i]) for row in cells) for i in range(len(headers))]

    def line(left: str, mid: str, right: str) -> str:
        return left + mid.join("─" * (w + 2) for w in widths) + right

    def row(values: list[str]) -> str:
        return "│" + "│".join(f" {pad(v, w)} " for v, w in zip(values, widths, strict=True)) + "│"

    out = [line("┌", "┬", "┐"), row(cells[0]), line("├", "┼", "┤")]
    out.extend(row(r) for r in cells[1:])
    out.append(line("└", "┴", "┘"))
    return "\n".join(out)


def echo(text: str = "") -> None:
    """Print a line on stdout."""
    click.echo(text)


def info(text: str) -> None:
    """Print an informational line on stderr (kept out of ``--json`` output)."""
    click.echo(text, err=True)


def warn(text: str) -> None:
    """Print a warning line on stderr."""
    click.echo(f"▲ [WARNING] {text}", err=True)


def emit_json(value: Any) -> None:
    """Print a value as indented JSON on stdout."""
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` at ``limit`` characters, marking the cut the way wrangler does."""
    if limit <= 0 or len(text) <= limit:
        return text
    return text[:limit] + "[...output truncated]"
