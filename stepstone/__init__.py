"""stepstone: Cloudflare Workflows for Python, self-hosted.

Write a :class:`WorkflowEntrypoint` with ``async def run(self, event, step)``; run it on an :class:`Engine`
(SQLite by default, PostgreSQL to scale out). Steps are retried, cached by name and persisted; sleeps and
event waits hibernate without holding a process.
"""

from stepstone.binding import BatchResult, Workflow
from stepstone.durations import Duration
from stepstone.engine import Engine
from stepstone.errors import (
    CPUTimeLimitError,
    EventLoopBlockedError,
    FencedError,
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidStateError,
    LimitExceededError,
    NonRetryableError,
    RateLimitedError,
    ReplayDivergenceError,
    SerializationError,
    StepFailedError,
    StepstoneError,
    StorageError,
    ValidationError,
    WorkflowFatalError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)
from stepstone.instance import InstanceError, InstanceStatus, WorkflowInstance
from stepstone.limits import AccountLimits, Limits
from stepstone.retry import RetryConfig, StepConfig
from stepstone.step import WorkflowStep
from stepstone.step_blobs import ByteStream
from stepstone.step_do import StepContext
from stepstone.workflow import WorkflowEntrypoint, WorkflowEvent, WorkflowStepEvent

__version__ = "0.1.0"

__all__ = [
    "AccountLimits",
    "BatchResult",
    "ByteStream",
    "CPUTimeLimitError",
    "Duration",
    "Engine",
    "EventLoopBlockedError",
    "FencedError",
    "InstanceError",
    "InstanceExistsError",
    "InstanceNotFoundError",
    "InstanceStatus",
    "InvalidStateError",
    "LimitExceededError",
    "Limits",
    "NonRetryableError",
    "RateLimitedError",
    "ReplayDivergenceError",
    "RetryConfig",
    "SerializationError",
    "StepConfig",
    "StepContext",
    "StepFailedError",
    "StepstoneError",
    "StorageError",
    "ValidationError",
    "Workflow",
    "WorkflowEntrypoint",
    "WorkflowEvent",
    "WorkflowFatalError",
    "WorkflowInstance",
    "WorkflowNotFoundError",
    "WorkflowStep",
    "WorkflowStepEvent",
    "WorkflowTimeoutError",
    "__version__",
]
