"""What a workflow author writes against: the entrypoint class and the event objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar, get_args, get_origin

P = TypeVar("P")


class _AttrDict:
    """Attribute access plus Cloudflare's dict-style keys (``event["payload"]``, ``event["instanceId"]``)."""

    _aliases: ClassVar[dict[str, str]] = {}

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, self._aliases.get(key, key))
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style get."""
        try:
            return self[key]
        except KeyError:
            return default


@dataclass(frozen=True, slots=True)
class WorkflowEvent(_AttrDict, Generic[P]):
    """The event ``run()`` receives (``WorkflowEvent[Params]`` for a typed workflow).

    Attributes:
        payload: the params the instance was created with: an object of the workflow's params type when it
            declares one (``class Signup(WorkflowEntrypoint[SignupParams])``), else the plain value.
        timestamp: when the instance was created (aware, UTC).
        instance_id: the instance's id.
        workflow_name: the workflow's name.
        schedule: for cron-created instances, ``{"cron": ..., "scheduled_time": ...}``.
    """

    payload: P
    timestamp: datetime
    instance_id: str
    workflow_name: str
    schedule: dict[str, Any] | None = None

    _aliases: ClassVar[dict[str, str]] = {"instanceId": "instance_id", "workflowName": "workflow_name"}


@dataclass(frozen=True, slots=True)
class WorkflowStepEvent(_AttrDict):
    """What ``step.wait_for_event`` returns: the event's ``payload``, ``type`` and ``timestamp``."""

    payload: Any
    type: str
    timestamp: datetime


class WorkflowEntrypoint(Generic[P]):
    """Base class of a workflow: subclass it and write ``async def run(self, event, step)``.

    ``class Signup(WorkflowEntrypoint[SignupParams])``, with a pydantic model, a dataclass or a TypedDict, declares
    the type of its params: ``create()`` checks them against it (a ``ValidationError`` naming each field that does
    not match) and ``event.payload`` is a ``SignupParams``. Unparametrised, params are the plain values given.

    Attributes:
        env: the bindings (other workflows by binding name) and vars of the project.
        ctx: the execution context (reserved; None today).
    """

    def __init__(self, ctx: Any = None, env: Any = None) -> None:
        self.ctx = ctx
        self.env = env

    async def run(self, event: WorkflowEvent[P], step: Any) -> Any:
        """The workflow body. Its return value becomes the instance's output."""
        raise NotImplementedError(f"{type(self).__name__} must define async def run(self, event, step)")


def params_type(cls: type) -> object | None:
    """The params type a workflow class declares with ``WorkflowEntrypoint[T]`` (searched along its bases), or
    None when it declares none (or only a type variable)."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if get_origin(base) is WorkflowEntrypoint:
                (arg,) = get_args(base)
                return None if isinstance(arg, TypeVar) or arg is Any else arg
    return None
