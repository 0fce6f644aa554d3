"""Cloudflare's documented limits (paid plan) and the validators that enforce them.

Validators raise :class:`ValidationError` for a malformed value and :class:`LimitExceededError` for one that
is too long or too large; messages name the value and the limit.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stepstone.durations import format_millis, to_millis
from stepstone.errors import LimitExceededError, ValidationError
from stepstone.text import check_text

__all__ = [
    "ID_PATTERN",
    "MAX_STEPS",
    "AccountLimits",
    "CreationRate",
    "Limits",
    "check_size",
    "state_limit_message",
    "validate_batch_size",
    "validate_event_timeout_ms",
    "validate_event_type",
    "validate_instance_id",
    "validate_sleep_ms",
    "validate_step_name",
    "validate_workflow_name",
]

ID_PATTERN = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9-_]*$")
"""Instance ids, workflow names and event types: letters, digits, ``_`` and ``-``, not starting with ``-``."""

MAX_STEPS = 25_000
"""The highest ``steps`` limit a workflow may configure."""

_DAY_MS = 86_400_000.0
_CONTROL_RE = re.compile(r"[\x00-\x1f]")
_WORKFLOW_NAME_RULE = (
    "Workflow names must be 1-64 characters long, start with a letter, number, or underscore, "
    "and may only contain letters, numbers, underscores, or hyphens."
)


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits one workflow runs under. Defaults are Cloudflare's paid plan."""

    steps: int = 10_000
    """Max ``step.do`` calls per instance run (sleeps, waits not counted). Default 10 000, max 25 000."""
    step_result_bytes: int = 1_048_576
    """Max encoded size of a step result. Default 1 MiB."""
    payload_bytes: int = 1_048_576
    """Max encoded size of params, event payloads and outputs. Default 1 MiB."""
    instance_state_bytes: int = 1 << 30
    """Max state one instance may persist: its recorded step results plus its streamed step outputs (the blob
    store). Default 1 GiB (Cloudflare's paid plan; 100 MB on the free plan)."""
    instance_id_length: int = 100
    """Max instance id length. Default 100."""
    workflow_name_length: int = 64
    """Max workflow name length. Default 64."""
    step_name_length: int = 256
    """Max step name length. Default 256."""
    event_type_length: int = 100
    """Max event type length. Default 100."""
    sleep_max_ms: float = 365 * _DAY_MS
    """Longest sleep, in milliseconds. Default 365 days."""
    event_timeout_min_ms: float = 1_000.0
    """Shortest ``wait_for_event`` timeout, in milliseconds. Default 1 second."""
    event_timeout_max_ms: float = 365 * _DAY_MS
    """Longest ``wait_for_event`` timeout, in milliseconds. Default 365 days."""
    retries_max: int = 10_000
    """Max ``retries.limit`` of a step. Default 10 000."""
    batch_max: int = 100
    """Max instances per ``create_batch``. Default 100."""
    success_retention_ms: float = 7 * _DAY_MS
    """How long a completed instance is kept, in milliseconds. Default 7 days."""
    error_retention_ms: float = 7 * _DAY_MS
    """How long an errored instance is kept, in milliseconds. Default 7 days."""
    cpu_ms: float | None = None
    """Max CPU time of one attempt of a sync step, in milliseconds (Cloudflare's ``limits.cpu_ms``, measured on
    the step's thread). Default None: no limit (Cloudflare's 30 s default is not imposed). Not measurable, so
    not enforced, for ``async def`` steps, which share the event loop's thread: their timeout holds instead."""
    max_queued_instances: int | None = 2_000_000
    """Max instances of the workflow ``queued`` (created, not yet started) at once; a create beyond it is refused
    (:class:`~stepstone.errors.RateLimitedError`). Default 2,000,000 (Cloudflare's paid plan); None: no limit."""
    creation_rate: float | None = None
    """Max instances of the workflow created per second (batches count each instance, restarts count too).
    Default None: no limit (Cloudflare's paid plan: 100 per second per workflow, which would only throttle a
    self-hosted server)."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _OPTIONAL and value is None:
                continue
            if f.name == "creation_rate":
                _check_rate(value, "limit creation_rate")
                continue
            if f.name.endswith("_ms"):
                ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                if not ok or value <= 0:
                    raise ValidationError(f"limit {f.name} {value!r} is invalid: expected a duration > 0")
            elif not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValidationError(f"limit {f.name} {value!r} is invalid: expected an integer >= 1")
        if self.steps > MAX_STEPS:
            raise LimitExceededError(f"limit steps {self.steps} exceeds the maximum of {MAX_STEPS} steps")
        if self.event_timeout_min_ms > self.event_timeout_max_ms:
            raise ValidationError(
                f"limit event_timeout_min_ms {self.event_timeout_min_ms!r} is above "
                f"event_timeout_max_ms {self.event_timeout_max_ms!r}"
            )

    def replace(self, **changes: object) -> Limits:
        """A copy with some limits changed; names and values as in :meth:`from_mapping`, and checked."""
        return dataclasses.replace(self, **_coerce(changes))

    @classmethod
    def from_mapping(cls, m: Mapping[str, object]) -> Limits:
        """Limits from a config mapping, over the defaults.

        Keys are field names; the ``*_ms`` fields also accept a duration (``"30 days"``) and may be named
        without ``_ms`` (``{"success_retention": "30 days"}``). Cloudflare's ``{"steps": N}`` works as is.

        Raises:
            ValidationError: an unknown key or an invalid value.
            LimitExceededError: ``steps`` above :data:`MAX_STEPS`.
        """
        if not isinstance(m, Mapping):
            raise ValidationError(f"limits {m!r} are invalid: expected a mapping")
        return dataclasses.replace(cls(), **_coerce(m))


_FIELDS = tuple(f.name for f in dataclasses.fields(Limits))
_OPTIONAL = frozenset({"cpu_ms", "max_queued_instances", "creation_rate"})


def _check_rate(value: object, what: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value <= 0:  # type: ignore[operator]
        raise ValidationError(f"{what} {value!r} is invalid: expected a number of instances per second > 0")


@dataclass(frozen=True, slots=True)
class AccountLimits:
    """The limits every workflow of one account shares (``Engine(account_limits=...)``, ``[stepstone.limits]``).

    Defaults are Cloudflare's paid plan where they cannot throttle a self-hosted server.
    """

    concurrency: int | None = 50_000
    """Max instances of the account ``running`` at once, over every workflow and worker; the others stay
    ``queued`` until a slot frees (waiting instances hold none). Default 50,000 (Cloudflare's paid plan)."""
    creation_rate: float | None = None
    """Max instances of the account created per second. Default None: no limit (Cloudflare's paid plan: 300 per
    second per account)."""

    def __post_init__(self) -> None:
        c = self.concurrency
        if c is not None and (not isinstance(c, int) or isinstance(c, bool) or c < 1):
            raise ValidationError(f"account limit concurrency {c!r} is invalid: expected an integer >= 1")
        if self.creation_rate is not None:
            _check_rate(self.creation_rate, "account limit creation_rate")

    @classmethod
    def from_mapping(cls, m: Mapping[str, object]) -> AccountLimits:
        """Account limits from ``{"concurrency": ..., "creation_rate": ...}`` (None or False: no limit).

        Raises:
            ValidationError: an unknown key or an invalid value.
        """
        if not isinstance(m, Mapping):
            raise ValidationError(f"account limits {m!r} are invalid: expected a mapping")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(m) - set(names))
        if unknown:
            raise ValidationError(f"unknown account limit(s) {unknown}: allowed are {', '.join(names)}")
        return cls(**{k: None if v is False else v for k, v in m.items()})  # type: ignore[arg-type]


class CreationRate:
    """Token buckets that hold instance creation to a rate per key, with a second's worth of burst (at least one).

    Each key (a workflow, an account) starts full; ``n`` instances take ``n`` tokens; tokens come back at the
    rate. Time is passed in (the engine's clock), so tests need no sleeps.
    """

    def __init__(self) -> None:
        self._buckets: dict[object, tuple[float, float]] = {}

    @staticmethod
    def burst(rate: float) -> float:
        """The most instances one call may create under ``rate``: a second's worth, at least one."""
        return max(rate, 1.0)

    def _tokens(self, key: object, rate: float, now: float) -> float:
        cap = self.burst(rate)
        tokens, last = self._buckets.get(key, (cap, now))
        return min(cap, tokens + max(0.0, now - last) * rate)

    def wait_needed(self, key: object, rate: float, n: int, now: float) -> float:
        """Seconds until ``n`` instances may be created under ``rate`` (0: now); takes nothing."""
        tokens = self._tokens(key, rate, now)
        return 0.0 if tokens >= n - 1e-6 else (n - tokens) / rate  # 1e-6: epoch-second floats lose ~1e-7

    def take(self, key: object, rate: float, n: int, now: float) -> None:
        """Take ``n`` tokens (after :meth:`wait_needed` said 0)."""
        self._buckets[key] = (self._tokens(key, rate, now) - n, now)


def _coerce(m: Mapping[str, object]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in m.items():
        name = key if key in _FIELDS else f"{key}_ms"
        if not isinstance(key, str) or name not in _FIELDS:
            raise ValidationError(f"unknown limit {key!r}: allowed limits are {', '.join(_FIELDS)}")
        if name in out:
            raise ValidationError(f"limit {name} is given twice")
        if name in _OPTIONAL and value is False:  # TOML has no null: false turns a limit off
            value = None
        if name.endswith("_ms") and isinstance(value, int | float | str | datetime.timedelta):
            value = to_millis(value, what=f"limit {key}")
        out[name] = value
    return out


def _show(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _check_id(value: object, max_length: int, what: str, rule: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{what} {_show(value)} is invalid: expected a string")
    if len(value) > max_length:
        raise LimitExceededError(f"{what} {_show(value)} is {len(value)} characters, over the limit of {max_length}")
    if not ID_PATTERN.fullmatch(value):
        raise ValidationError(f"{what} {_show(value)} is invalid: {rule}")
    return value


def _id_rule(max_length: int) -> str:
    return f"expected 1-{max_length} characters: letters, numbers, underscores or hyphens, not starting with a hyphen"


def validate_instance_id(value: object, limits: Limits) -> str:
    """Check an instance id: 1-100 characters matching :data:`ID_PATTERN` (too long: LimitExceededError)."""
    n = limits.instance_id_length
    return _check_id(value, n, "instance id", _id_rule(n))


def validate_workflow_name(value: object, limits: Limits) -> str:
    """Check a workflow name: 1-64 characters matching :data:`ID_PATTERN` (too long: LimitExceededError)."""
    n = limits.workflow_name_length
    return _check_id(value, n, "workflow name", _WORKFLOW_NAME_RULE.replace("1-64", f"1-{n}"))


def validate_event_type(value: object, limits: Limits) -> str:
    """Check an event type: 1-100 characters matching :data:`ID_PATTERN` (too long: LimitExceededError)."""
    n = limits.event_type_length
    return _check_id(value, n, "event type", _id_rule(n))


def validate_step_name(value: object, limits: Limits, *, what: str = "step name") -> str:
    """Check a step name: a string of at most 256 characters with no control character and no lone surrogate;
    empty is allowed. ``what`` names the value in messages (``restart from.name``).

    Raises:
        ValidationError: not a string, a control character (``\\x00``-``\\x1f``) or a lone surrogate.
        LimitExceededError: too long.
    """
    n = limits.step_name_length
    if not isinstance(value, str):
        raise ValidationError(f"{what} {_show(value)} is invalid: expected a string")
    if len(value) > n:
        raise LimitExceededError(f"{what} {_show(value)} is {len(value)} characters, over the limit of {n}")
    if _CONTROL_RE.search(value):
        raise ValidationError(f"{what} {_show(value)} is invalid: control characters (\\x00-\\x1f) are not allowed")
    if value.isascii():  # no surrogate, and the NUL check_text refuses is a control character, refused above
        return value
    return check_text(value, what=what)


def _check_ms(ms: float, what: str) -> None:
    if isinstance(ms, bool) or not isinstance(ms, int | float) or math.isnan(ms):
        raise ValidationError(f"{what} {ms!r} is invalid: expected a number of milliseconds")
    if ms < 0:
        raise ValidationError(f"{what} {format_millis(ms)} ({ms:g} ms) is invalid: must not be negative")


def _show_ms(ms: float) -> str:
    number = str(int(ms)) if float(ms).is_integer() else f"{ms:g}"
    return f"{format_millis(ms)} ({number} ms)"


def validate_sleep_ms(ms: float, limits: Limits, *, name: str) -> float:
    """Check a sleep duration in milliseconds (``name`` is the step's, for messages): 0 to 365 days.

    Raises:
        ValidationError: negative or NaN.
        LimitExceededError: above ``limits.sleep_max_ms``.
    """
    what = f'sleep "{name}" duration'
    _check_ms(ms, what)
    if ms > limits.sleep_max_ms:
        raise LimitExceededError(f"{what} {_show_ms(ms)} exceeds the limit of {format_millis(limits.sleep_max_ms)}")
    return ms


def validate_event_timeout_ms(ms: float, limits: Limits, *, name: str) -> float:
    """Check a ``wait_for_event`` timeout in milliseconds (``name`` is the step's): 1 second to 365 days.

    Raises:
        ValidationError: negative, NaN, or below ``limits.event_timeout_min_ms``.
        LimitExceededError: above ``limits.event_timeout_max_ms``.
    """
    what = f'wait_for_event "{name}" timeout'
    _check_ms(ms, what)
    if ms < limits.event_timeout_min_ms:
        raise ValidationError(
            f"{what} {_show_ms(ms)} is below the minimum of {format_millis(limits.event_timeout_min_ms)}"
        )
    if ms > limits.event_timeout_max_ms:
        raise LimitExceededError(
            f"{what} {_show_ms(ms)} exceeds the limit of {format_millis(limits.event_timeout_max_ms)}"
        )
    return ms


def _format_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            text = f"{n / size:.2f}".rstrip("0").rstrip(".")
            return f"{n} bytes ({text} {unit})"
    return f"{n} bytes"


def check_size(nbytes: int, limit: int, *, what: str) -> None:
    """Check an encoded size against a limit.

    Args:
        nbytes: the size in bytes.
        limit: the largest size allowed.
        what: what was measured, e.g. ``'step "load-1" result'``.

    Raises:
        LimitExceededError: ``nbytes > limit``, e.g. ``step "load-1" result is 1048577 bytes, over the
            limit of 1048576 bytes (1 MiB)``.
    """
    if nbytes > limit:
        raise LimitExceededError(f"{what} is {nbytes} bytes, over the limit of {_format_bytes(limit)}")


def _short_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n} bytes"


def state_limit_message(what: str, nbytes: int, stored: int, limit: int) -> str:
    """Cloudflare's message for an instance over its state limit, with the value and the limit, e.g. ``The
    instance has exceeded the 1GiB storage limit: step "load-1" output of at least 1073741825 bytes, with 0
    bytes already stored, is over the limit of 1073741824 bytes (1 GiB)``."""
    return (
        f"The instance has exceeded the {_short_bytes(limit)} storage limit: {what} of at least {nbytes} bytes, "
        f"with {stored} bytes already stored, is over the limit of {_format_bytes(limit)}"
    )


def validate_batch_size(n: int, limits: Limits) -> None:
    """Check the number of instances in one ``create_batch``: 1 to ``limits.batch_max``.

    Raises:
        ValidationError: fewer than 1.
        LimitExceededError: more than ``limits.batch_max``.
    """
    if n < 1:
        raise ValidationError(f"batch of {n} instances is invalid: a batch must contain at least 1 instance")
    if n > limits.batch_max:
        raise LimitExceededError(f"batch of {n} instances exceeds the limit of {limits.batch_max} instances per batch")
