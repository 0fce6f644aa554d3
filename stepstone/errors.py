"""The errors stepstone raises, and the two a workflow author raises.

The tree::

    Exception
    ├── NonRetryableError               raised by user code: stop retrying this step now
    └── StepstoneError                  root of everything stepstone raises
        ├── ValidationError (ValueError)      bad input: an id, a duration, a config, a value
        │   ├── LimitExceededError            a documented limit was exceeded
        │   └── SerializationError            a value cannot be stored (type, size)
        ├── NotFoundError (LookupError)
        │   ├── WorkflowNotFoundError
        │   └── InstanceNotFoundError
        ├── InstanceExistsError               create() with an id already in use
        ├── InvalidStateError                 an operation the instance's status refuses
        ├── RateLimitedError                  a creation rate or the queued-instance limit was reached: retry later
        ├── WorkflowTimeoutError              a step attempt or an event wait timed out
        ├── CPUTimeLimitError                 a sync step attempt used more CPU than ``limits.cpu_ms``
        ├── EventLoopBlockedError             an async step attempt blocked the event loop too long
        ├── StepProcessError                  a sync step's process (isolation="process") was killed or died
        ├── WorkflowFatalError                the instance cannot go on (step limit, bad value)
        │   └── ReplayDivergenceError         on_divergence="fail": the code no longer reaches recorded steps
        ├── StepFailedError                   a replayed step failure whose class cannot be rebuilt
        └── StorageError                      the database failed or refused
            ├── StorageUnavailableError       it cannot take writes now (disk full, I/O error, unreachable)
            ├── FencedError                   this worker lost the instance's lease
            └── SchemaVersionError            the database schema is not the one this code expects

Names follow Cloudflare where Cloudflare has one.
"""

from __future__ import annotations


class NonRetryableError(Exception):
    """Raised inside a step to fail it at once, without further retries.

    Args:
        message: what went wrong.
        name: the error name recorded on the step and the instance (Cloudflare's second argument).
    """

    def __init__(self, message: str = "", name: str = "NonRetryableError") -> None:
        super().__init__(message)
        self.name = name


class StepstoneError(Exception):
    """The root of every error stepstone raises."""


class ValidationError(StepstoneError, ValueError):
    """An argument was malformed: the message names the value and what was expected.

    Attributes:
        errors: for a value checked against its declared type (typed params, a typed step result), one
            ``{"field": "items[0].sku", "message": "field required"}`` per field that did not match; else empty.
    """

    errors: tuple[dict[str, str], ...] = ()

    def __init__(self, *args: object, errors: tuple[dict[str, str], ...] | list[dict[str, str]] = ()) -> None:
        super().__init__(*args)
        if errors:
            self.errors = tuple(errors)


class LimitExceededError(ValidationError):
    """A documented limit was exceeded: the message names the value and the limit."""


class SerializationError(ValidationError):
    """A value cannot be stored: not JSON, bytes or datetime, or too large."""


class NotFoundError(StepstoneError, LookupError):
    """Something named does not exist."""


class WorkflowNotFoundError(NotFoundError):
    """No workflow is registered under this name."""


class InstanceNotFoundError(NotFoundError):
    """No instance with this id exists in this workflow (or it was deleted after its retention)."""


class InstanceExistsError(StepstoneError):
    """An instance with this id already exists; use restart() to run it again."""


class InvalidStateError(StepstoneError):
    """The instance's status does not allow this operation (terminating a finished instance)."""


class RateLimitedError(StepstoneError):
    """Creating instances now would pass a limit that frees up with time: the creation rate (per workflow, per
    account) or the maximum of queued instances. Retry later; over REST it is a 429.

    Attributes:
        code: the v4 error code: 971 for a creation rate (Cloudflare's API rate-limit code), 10411 for the
            queued-instance limit.
        retry_after: seconds after which the same call may succeed, when known.
    """

    def __init__(self, message: str, *, code: int, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class WorkflowTimeoutError(StepstoneError):
    """A step attempt ran past its timeout, or a wait_for_event passed its deadline."""


class CPUTimeLimitError(StepstoneError):
    """A sync step attempt used more CPU time than ``limits.cpu_ms`` (Cloudflare's message). Retried."""


class EventLoopBlockedError(StepstoneError):
    """An async step attempt blocked the event loop longer than the worker allows; the message names the step
    and the duration. Retried like any failure."""


class StepProcessError(StepstoneError):
    """A sync step attempt's process (``isolation="process"``) was killed or died before it answered. Retried."""


class WorkflowFatalError(StepstoneError):
    """The instance cannot continue: a limit was reached or a value cannot be stored. Never retried."""


class ReplayDivergenceError(WorkflowFatalError):
    """A replay called a step that history does not hold before reaching every recorded step (the code changed
    under the instance), and its workflow was registered with ``on_divergence="fail"``: the instance errors
    before the new step runs."""


class StepFailedError(StepstoneError):
    """A step failure replayed from history whose original exception class could not be rebuilt.

    Attributes:
        name: the recorded error name (the original class name).
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


class StorageError(StepstoneError):
    """The database failed or refused an operation."""


class StorageUnavailableError(StorageError):
    """The database cannot take the write now, for a reason that can pass: its disk is full, an I/O error, the
    server is unreachable or PostgreSQL gave up reconnecting. A run's writes are retried while its lease holds."""


class FencedError(StorageError):
    """This worker no longer holds the instance's lease; its writes are refused."""


class SchemaVersionError(StorageError):
    """The database schema version differs from the one this code was written for."""


def error_name(exc: BaseException) -> str:
    """The name recorded for an exception: the ``name`` given to a NonRetryableError, else its class name."""
    if isinstance(exc, NonRetryableError | StepFailedError) and exc.name:
        return exc.name
    return type(exc).__name__


def is_non_retryable(exc: BaseException) -> bool:
    """Cloudflare's rule: by class, by name, or by a message starting with ``NonRetryableError``."""
    if isinstance(exc, NonRetryableError):
        return True
    return error_name(exc) == "NonRetryableError" or str(exc).startswith("NonRetryableError")
