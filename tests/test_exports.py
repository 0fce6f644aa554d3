"""The public API is exactly ``stepstone.__all__``, sorted; every name has a docstring."""

from __future__ import annotations

import stepstone

EXPECTED = [
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


def test_all_is_pinned_and_sorted() -> None:
    assert stepstone.__all__ == EXPECTED
    assert sorted(stepstone.__all__) == stepstone.__all__


def test_every_public_class_has_a_docstring() -> None:
    for name in stepstone.__all__:
        obj = getattr(stepstone, name)
        if isinstance(obj, type):
            assert obj.__doc__, name
