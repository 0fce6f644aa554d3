"""The errors the bindings raise, with Cloudflare's messages.

::

    StepstoneError
    └── BindingError                    a binding refused an operation
        ├── KVError                     "KV PUT failed: 413 Value length of ... exceeds limit of ..."
        ├── D1Error                     "D1_ERROR: no such table: users: SQLITE_ERROR"
        ├── R2Error                     "put: The specified object name is not valid. (10020)"
        ├── QueueError                  "Queue send failed: ..."
        └── BindingNotConfiguredError   env.AI used without a configured implementation

Where Cloudflare throws a JavaScript ``TypeError`` (a value of the wrong type) the bindings raise Python's
``TypeError`` with the same text.
"""

from __future__ import annotations

from stepstone.errors import StepstoneError


class BindingError(StepstoneError):
    """A binding refused an operation; the message is Cloudflare's."""


class KVError(BindingError):
    """A KV operation failed: ``KV <METHOD> failed: <status> <reason>``."""


class D1Error(BindingError):
    """A D1 statement failed: ``D1_ERROR: <SQLite's message>: <code>`` (or ``D1_TYPE_ERROR``, ...)."""


class R2Error(BindingError):
    """An R2 operation failed: ``<method>: <reason> (<code>)``."""


class QueueError(BindingError):
    """A queue operation failed."""


class BindingNotConfiguredError(BindingError, AttributeError):
    """A binding (Workers AI, Vectorize) has no implementation here; the message says how to configure one.

    It is an ``AttributeError`` too, so ``hasattr(env, "AI")`` stays False-safe for code that probes.
    """


__all__ = ["BindingError", "BindingNotConfiguredError", "D1Error", "KVError", "QueueError", "R2Error"]
