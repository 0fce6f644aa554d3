"""``workers.workflows``: the Workflows names of the Python Workers SDK.

``NonRetryableError`` is stepstone's own (:class:`stepstone.NonRetryableError`): raising it in a step fails the
step at once, without further retries, as on Cloudflare.
"""

from __future__ import annotations

from stepstone.errors import NonRetryableError
from stepstone.workflow import WorkflowEntrypoint, WorkflowEvent, WorkflowStepEvent

__all__ = ["NonRetryableError", "WorkflowEntrypoint", "WorkflowEvent", "WorkflowStepEvent"]
