"""Replay divergence: when a replay's code no longer reaches the recorded steps in the order history holds.

A replay calls ``run()`` from the top and serves each step from history by its key (kind, name, occurrence).
Code changed under a running instance can call a step history does not hold (a renamed step, a new one put
before recorded ones, a sleep of another length) while a recorded step is never reached: the recorded step's
work is not replayed, the new step runs for the first time (a renamed "charge card" charges again). The run
judges this when it first calls a step that history does not hold, once its other branches have caught up with
their own recorded steps: any recorded step not reached by then is a divergence. It is recorded per version,
logged, shown in ``describe`` and REST details, and with ``on_divergence="fail"`` it fails the instance before the
new step runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Final

from stepstone.errors import ValidationError
from stepstone.models import StepRecord

ON_DIVERGENCE: Final = ("record", "fail")
"""What a workflow does when its replay diverges: ``record`` (the default: record, log and go on) or ``fail``."""

_KIND_NAMES: Final = {"do": "do", "sleep": "sleep", "wait": "waitForEvent"}


@dataclass(frozen=True, slots=True)
class StepId:
    """A step as a user names it: its kind (``do``, ``sleep``, ``waitForEvent``), name and occurrence."""

    kind: str
    name: str
    count: int

    def __str__(self) -> str:
        return f"{self.name!r} ({self.kind}, {self.count})"

    def doc(self) -> dict[str, Any]:
        """``{"name", "type", "count"}``, as REST names a step in ``restart(from)``."""
        return {"name": self.name, "type": self.kind, "count": self.count}


def recorded_id(step: StepRecord) -> StepId:
    """The :class:`StepId` of a recorded step."""
    return StepId(_KIND_NAMES.get(step.kind, step.kind), step.name, step.count)


@dataclass(slots=True)
class Divergence:
    """How one execution's replay left the recorded history."""

    not_reached: list[StepId]
    """Recorded steps the replay had not reached when it first ran a step history does not hold."""
    first_run: list[StepId] = field(default_factory=list)
    """The steps this execution ran for the first time, in the order it called them."""
    detected_at: float = 0.0
    reached_late: list[StepId] = field(default_factory=list)
    """Of ``not_reached``, those the replay reached later (after new steps): the order changed."""
    failed: bool = False
    """The run failed the instance for it (``on_divergence="fail"``): the new steps did not run."""

    def message(self) -> str:
        """The sentence that ``describe``, REST and the logs show."""
        missing = [s for s in self.not_reached if s not in self.reached_late]
        new = ", ".join(str(s) for s in self.first_run) or "none"
        ran = "would have run" if self.failed else "ran"
        tail = f"these steps {ran} for the first time: {new}"
        if missing:
            steps = ", ".join(str(s) for s in missing)
            verb = "was" if len(missing) == 1 else "were"
            noun = "step" if len(missing) == 1 else "steps"
            return f"recorded {noun} {steps} {verb} not reached by this version; {tail}"
        steps = ", ".join(str(s) for s in self.reached_late)
        return (
            f"recorded steps {steps} were reached by this version only after steps it {ran} for the first time: {new}"
        )

    def to_json(self) -> str:
        """What ``instance_versions.divergence`` stores."""
        return json.dumps(
            {
                "message": self.message(),
                "detected_at": self.detected_at,
                "not_reached": [s.doc() for s in self.not_reached if s not in self.reached_late],
                "reached_late": [s.doc() for s in self.reached_late],
                "first_run": [s.doc() for s in self.first_run],
                "failed": self.failed,
            },
            separators=(",", ":"),
        )


def check_on_divergence(value: object, *, what: str) -> str:
    """Validate an ``on_divergence`` option; returns it."""
    if value not in ON_DIVERGENCE:
        raise ValidationError(f'{what}: on_divergence must be "record" or "fail", got {value!r}')
    return str(value)
