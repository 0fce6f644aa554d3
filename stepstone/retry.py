"""Step configuration (retries, timeout, sensitivity) and the retry schedule.

Cloudflare's step config is ``{"retries": {"limit", "delay", "backoff"}, "timeout", "sensitive"}``;
:func:`resolve_step_config` checks it and merges it over the defaults (limit 5, delay 10 seconds,
exponential backoff, timeout 10 minutes). ``retries.limit`` counts retries, not attempts; infinity
(``math.inf``, or the string ``"Infinity"`` as JavaScript's ``Infinity`` arrives in JSON) retries without end.
"""

from __future__ import annotations

import datetime
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

from stepstone.durations import Duration, to_millis
from stepstone.errors import LimitExceededError, ValidationError

__all__ = [
    "BACKOFFS",
    "DYNAMIC_DELAY",
    "INFINITY",
    "PREDICATE",
    "Backoff",
    "DelayFunction",
    "RetryConfig",
    "RetryIf",
    "RetryPredicate",
    "StepConfig",
    "resolve_step_config",
    "retry_delay_ms",
    "will_retry",
]

Backoff: TypeAlias = Literal["constant", "linear", "exponential"]
BACKOFFS: tuple[Backoff, ...] = ("constant", "linear", "exponential")

RetryPredicate: TypeAlias = Callable[[BaseException], bool]
"""``retry_if`` as a function: called with the attempt's error, True to retry it."""
RetryIf: TypeAlias = RetryPredicate | tuple[type[BaseException], ...]
"""``retry_if``: a predicate, or the exception classes worth retrying."""

DelayFunction: TypeAlias = Callable[[object, BaseException], Duration | Awaitable[Duration]]
"""A dynamic retry delay: called with the step context and the error, returns a duration (maybe awaitable)."""

DYNAMIC_DELAY = "[dynamic]"
"""The marker stored (and shown by REST) in place of a delay function."""

INFINITY = "Infinity"
"""How an unbounded ``retries.limit`` is written in a config dict (JSON has no infinity): the seed's and
JavaScript's spelling; ``math.inf`` is accepted too."""

_BACKOFF_BY_NAME: dict[object, Backoff] = {b: b for b in BACKOFFS}
_DEFAULT_TIMEOUT_MS = 600_000.0
_CONFIG_KEYS = ("retries", "timeout", "sensitive")
_RETRY_KEYS = ("limit", "delay", "backoff", "jitter", "max_delay", "retry_if")
PREDICATE = "[predicate]"
"""The marker stored (and shown) in place of a ``retry_if`` function."""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """How a failing step is retried."""

    limit: int | float = 5
    """Retries after the first attempt (not total attempts): 0 means one attempt, ``math.inf`` retries without
    end. Default 5."""
    delay_ms: float = 10_000.0
    """Base delay before a retry, in milliseconds. Default 10 000 (10 seconds, as Cloudflare documents)."""
    backoff: Backoff = "exponential"
    """How the delay grows: constant, linear or exponential. Default exponential."""
    delay_fn: DelayFunction | None = None
    """A function giving the base delay per failed attempt, used instead of ``delay_ms``. Default None."""
    jitter: float = 0.0
    """stepstone: the share of each delay drawn at random: the delay is ``d * (1 - jitter * u)``, ``u`` uniform in
    [0, 1); 1.0 is full jitter (uniform in [0, d)). Default 0 (none, as on Cloudflare)."""
    max_delay_ms: float | None = None
    """stepstone: the cap on each delay (before jitter), in milliseconds. Default None (no cap, as on Cloudflare)."""
    retry_if: RetryIf | None = None
    """stepstone: which errors are retried: a predicate ``(error) -> bool`` or a tuple of exception classes; any
    other error fails the step at once. Default None (every error but a NonRetryableError, as on Cloudflare)."""

    def __post_init__(self) -> None:
        if not (_is_int(self.limit) and self.limit >= 0) and self.limit != math.inf:
            raise ValidationError(f"retries.limit {self.limit!r} is invalid: expected an integer >= 0 or infinity")
        delay = self.delay_ms
        if not _is_number(delay) or not math.isfinite(delay) or delay < 0:
            raise ValidationError(f"retries.delay {delay!r} ms is invalid: expected a finite number >= 0")
        if self.backoff not in BACKOFFS:
            raise ValidationError(
                f"retries.backoff {self.backoff!r} is invalid: expected constant, linear or exponential"
            )
        if self.delay_fn is not None and not callable(self.delay_fn):
            raise ValidationError(f"retries.delay_fn {self.delay_fn!r} is invalid: expected a callable")
        j = self.jitter
        if not _is_number(j) or not 0 <= j <= 1:
            raise ValidationError(f'retries.jitter {j!r} is invalid: expected a fraction from 0 to 1 (or True, "full")')
        cap = self.max_delay_ms
        if cap is not None and (not _is_number(cap) or not math.isfinite(cap) or cap < 0):
            raise ValidationError(f"retries.max_delay {cap!r} ms is invalid: expected a finite duration >= 0")
        if self.retry_if is not None and not _retry_if_ok(self.retry_if):
            raise ValidationError(
                f"retries.retry_if {self.retry_if!r} is invalid: expected a function (error) -> bool or a tuple of "
                "exception classes"
            )

    def retries_error(self, exc: BaseException) -> bool:
        """Whether ``retry_if`` lets ``exc`` be retried (always, without one). A predicate that raises says no."""
        rule = self.retry_if
        if rule is None:
            return True
        if isinstance(rule, tuple):
            return isinstance(exc, rule)
        try:
            return bool(rule(exc))
        except Exception:
            return False


def _retry_if_ok(value: object) -> bool:
    if isinstance(value, type) and issubclass(value, BaseException):
        return False  # normalised to a tuple by the dict form; a RetryConfig takes a tuple
    if isinstance(value, tuple):
        return bool(value) and all(isinstance(t, type) and issubclass(t, BaseException) for t in value)
    return callable(value)


def _ms_number(ms: float) -> int | float:
    return int(ms) if float(ms).is_integer() else ms


@dataclass(frozen=True, slots=True)
class StepConfig:
    """The resolved configuration of one step."""

    retries: RetryConfig = RetryConfig()
    """The retry policy. Default: limit 5, delay 10 seconds, exponential backoff."""
    timeout_ms: float = _DEFAULT_TIMEOUT_MS
    """The timeout of each attempt, in milliseconds; must be > 0. Default 600 000 (10 minutes)."""
    sensitive: bool = False
    """Whether the output is hidden from REST and the dashboard (Cloudflare's ``"output"``). Default False."""

    def __post_init__(self) -> None:
        if not isinstance(self.retries, RetryConfig):
            raise ValidationError(f"retries {self.retries!r} is invalid: expected a RetryConfig")
        t = self.timeout_ms
        if not _is_number(t) or not math.isfinite(t) or t <= 0:
            raise ValidationError(f"timeout {t!r} ms is invalid: expected a finite number > 0")
        if not isinstance(self.sensitive, bool):
            raise ValidationError(f"sensitive {self.sensitive!r} is invalid: expected a bool")

    def to_dict(self) -> dict[str, object]:
        """Cloudflare's resolved shape, numbers in milliseconds.

        Returns:
            ``{"retries": {"limit", "delay", "backoff"}, "timeout"}`` plus ``"sensitive": "output"`` when
            sensitive; ``delay`` is ``"[dynamic]"`` when a delay function is set, ``limit`` is ``"Infinity"``
            when unbounded.
        """
        r = self.retries
        delay: object = DYNAMIC_DELAY if r.delay_fn is not None else _ms_number(r.delay_ms)
        retries: dict[str, object] = {
            "limit": INFINITY if r.limit == math.inf else r.limit,
            "delay": delay,
            "backoff": r.backoff,
        }
        if r.jitter:
            retries["jitter"] = _ms_number(r.jitter)
        if r.max_delay_ms is not None:
            retries["max_delay"] = _ms_number(r.max_delay_ms)
        if isinstance(r.retry_if, tuple):
            retries["retry_if"] = [f"{t.__module__}.{t.__qualname__}" for t in r.retry_if]
        elif r.retry_if is not None:
            retries["retry_if"] = PREDICATE
        out: dict[str, object] = {"retries": retries, "timeout": _ms_number(self.timeout_ms)}
        if self.sensitive:
            out["sensitive"] = "output"
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> StepConfig:
        """Read back a stored config written by :meth:`to_dict`.

        A ``"[dynamic]"`` delay becomes the default delay with no delay function. Malformed data raises
        :class:`ValidationError`.
        """
        return _from_mapping(data, prefix="stored step config", dynamic_marker=True)


def _reject_unknown(keys: Iterable[object], allowed: tuple[str, ...], prefix: str, where: str) -> None:
    for key in keys:
        if key not in allowed:
            raise ValidationError(f"{prefix} has unknown key {key!r}{where}: allowed keys are {', '.join(allowed)}")


def _from_mapping(config: Mapping[str, object], *, prefix: str, dynamic_marker: bool) -> StepConfig:
    if not isinstance(config, Mapping):
        raise ValidationError(f"{prefix} is invalid: expected a dict, got {type(config).__name__}")
    _reject_unknown(config, _CONFIG_KEYS, prefix, "")
    defaults = RetryConfig()
    retries = defaults
    raw = config.get("retries")
    if raw is not None:
        if not isinstance(raw, Mapping):
            raise ValidationError(f"{prefix}: retries {raw!r} is invalid: expected a dict")
        _reject_unknown(raw, _RETRY_KEYS, prefix, " in retries")
        limit = _limit(raw.get("limit", defaults.limit), prefix)
        delay = raw.get("delay", defaults.delay_ms)
        delay_ms, delay_fn = defaults.delay_ms, None
        if dynamic_marker and delay == DYNAMIC_DELAY:
            pass
        elif callable(delay):
            delay_fn = delay
        else:
            delay_ms = _duration(delay, prefix, "retries.delay")
        raw_backoff = raw.get("backoff", defaults.backoff)
        backoff = _BACKOFF_BY_NAME.get(raw_backoff) if isinstance(raw_backoff, str) else None
        if backoff is None:
            raise ValidationError(
                f"{prefix}: retries.backoff {raw_backoff!r} is invalid: expected constant, linear or exponential"
            )
        jitter = _jitter(raw.get("jitter", 0), prefix)
        raw_cap = raw.get("max_delay")
        max_delay_ms = None if raw_cap is None else _duration(raw_cap, prefix, "retries.max_delay")
        retry_if = _retry_if(raw.get("retry_if"), prefix, stored=dynamic_marker)
        retries = RetryConfig(
            limit=limit,
            delay_ms=delay_ms,
            backoff=backoff,
            delay_fn=delay_fn,
            jitter=jitter,
            max_delay_ms=max_delay_ms,
            retry_if=retry_if,
        )
    timeout_ms = _DEFAULT_TIMEOUT_MS
    raw_timeout = config.get("timeout")
    if raw_timeout is not None:
        timeout_ms = _duration(raw_timeout, prefix, "timeout")
        if timeout_ms <= 0:
            raise ValidationError(f"{prefix}: timeout {raw_timeout!r} is invalid: expected a duration > 0")
    sensitive = config.get("sensitive")
    if sensitive not in (None, "output"):
        raise ValidationError(f'{prefix}: sensitive {sensitive!r} is invalid: expected "output"')
    return StepConfig(retries=retries, timeout_ms=timeout_ms, sensitive=sensitive == "output")


def _limit(value: object, prefix: str) -> int | float:
    if value == INFINITY or (isinstance(value, float) and value == math.inf):
        return math.inf
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValidationError(
            f'{prefix}: retries.limit {value!r} is invalid: expected an integer >= 0, or float("inf") / "Infinity"'
        )
    return value


def _jitter(value: object, prefix: str) -> float:
    if value is True or value == "full":
        return 1.0
    if value is False or value is None:
        return 0.0
    if not _is_number(value) or not 0 <= value <= 1:  # type: ignore[operator]
        raise ValidationError(
            f'{prefix}: retries.jitter {value!r} is invalid: expected True, "full" or a fraction from 0 to 1'
        )
    return float(value)  # type: ignore[arg-type]


def _retry_if(value: object, prefix: str, *, stored: bool) -> RetryIf | None:
    if value is None:
        return None
    if stored:  # a stored config names its classes or the predicate marker; neither can be rebuilt here
        return None
    if isinstance(value, type) and issubclass(value, BaseException):
        return (value,)
    if (
        isinstance(value, list | tuple)
        and value
        and all(isinstance(t, type) and issubclass(t, BaseException) for t in value)
    ):
        return tuple(value)
    if callable(value) and not isinstance(value, type):
        return value
    raise ValidationError(
        f"{prefix}: retries.retry_if {value!r} is invalid: expected a function (error) -> bool, an exception class "
        "or a tuple of exception classes"
    )


def _duration(value: object, prefix: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str | datetime.timedelta):
        raise ValidationError(f"{prefix}: {key} {value!r} is invalid: expected a duration")
    try:
        return to_millis(value, what=key)
    except ValidationError as exc:
        raise ValidationError(f"{prefix}: {exc}") from None


DEFAULT_STEP_CONFIG: Final = StepConfig()
"""The config of a step given none (immutable, so one object serves every such step)."""


def resolve_step_config(
    config: Mapping[str, object] | StepConfig | None, *, step_name: str, max_retries: int = 10_000
) -> StepConfig:
    """Check a step's config and merge it over the defaults.

    A partial ``retries`` inherits its missing fields from the defaults (limit 5, delay 10 seconds,
    exponential), as Cloudflare's local engine merges; its strict validator would instead require both
    ``limit`` and ``delay``.

    Args:
        config: None (the defaults), a :class:`StepConfig`, or Cloudflare's dict shape
            ``{"retries": {"limit", "delay", "backoff"}, "timeout", "sensitive": "output"}``.
        step_name: the step's name, for error messages.
        max_retries: the largest finite ``retries.limit`` allowed (infinity, asked for explicitly, is allowed).

    Returns:
        The resolved config.

    Raises:
        ValidationError: the config is malformed (unknown key, bad duration, zero timeout, ...).
        LimitExceededError: a finite ``retries.limit`` is above ``max_retries``.
    """
    if config is None:
        resolved = DEFAULT_STEP_CONFIG
    elif isinstance(config, StepConfig):
        resolved = config
    elif isinstance(config, Mapping):
        resolved = _from_mapping(config, prefix=f'step config for "{step_name}"', dynamic_marker=False)
    else:
        raise ValidationError(
            f'step config for "{step_name}" is invalid: expected a dict or StepConfig, got {type(config).__name__}'
        )
    if resolved.retries.limit != math.inf and resolved.retries.limit > max_retries:
        raise LimitExceededError(
            f'step "{step_name}": retries.limit {resolved.retries.limit} exceeds the limit of '
            f"{max_retries} retries per step"
        )
    return resolved


def retry_delay_ms(
    retries: RetryConfig,
    failed_attempt: int,
    base_ms: float | None = None,
    *,
    rand: Callable[[], float] = random.random,
) -> float:
    """The delay before the retry that follows a failed attempt.

    constant: ``base``; linear: ``base * n``; exponential: ``base * 2 ** (n - 1)`` (Cloudflare's; an exponential
    delay too large for a float is ``math.inf``). Then stepstone's ``max_delay`` caps it and ``jitter`` draws
    ``d * (1 - jitter * rand())``; without them (the default) there is neither, as on Cloudflare.

    Args:
        retries: the retry policy.
        failed_attempt: the 1-based number of the attempt that failed.
        base_ms: the base delay (from a delay function); ``retries.delay_ms`` when None.
        rand: uniform in [0, 1), for the jitter.

    Returns:
        The delay in milliseconds.

    Raises:
        ValidationError: ``failed_attempt`` is below 1.
    """
    if not _is_int(failed_attempt) or failed_attempt < 1:
        raise ValidationError(f"failed attempt {failed_attempt!r} is invalid: expected an integer >= 1")
    delay = _backoff_ms(retries, failed_attempt, retries.delay_ms if base_ms is None else base_ms)
    if retries.max_delay_ms is not None:
        delay = min(delay, retries.max_delay_ms)
    if retries.jitter and math.isfinite(delay):
        delay *= 1 - retries.jitter * rand()
    return delay


def _backoff_ms(retries: RetryConfig, failed_attempt: int, base: float) -> float:
    if retries.backoff == "constant":
        return float(base)
    if retries.backoff == "linear":
        return float(base * failed_attempt)
    if base == 0:
        return 0.0
    try:
        return math.ldexp(base, failed_attempt - 1)
    except OverflowError:
        return math.inf


def will_retry(retries: RetryConfig, failed_attempt: int) -> bool:
    """Whether a retry follows failed attempt ``failed_attempt`` (1-based): ``failed_attempt <= limit``.

    Args:
        retries: the retry policy.
        failed_attempt: the 1-based number of the attempt that failed.

    Returns:
        True if another attempt should be made.
    """
    return failed_attempt <= retries.limit
