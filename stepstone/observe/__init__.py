"""Observability: what the engine tells its observers, turned into log lines, metrics and trace spans.

The engine calls one :class:`~stepstone.observe.observer.Observer` (a fan-out of several) at the few places
where it knows what happened: an instance created (the binding), a run started and finished (the worker), a
live step record stored or a live attempt run (the run state). Replayed steps store nothing, so observers never
hear of them.

- :mod:`~stepstone.observe.logs`: one log line per instance event worth seeing, the instance id on every log
  record and ``print()`` made inside ``run()``, quiet replays, text or JSON.
- :mod:`~stepstone.observe.metrics`: Prometheus metrics on a per-engine registry (``prometheus-client``).
- :mod:`~stepstone.observe.tracing`: OpenTelemetry spans per run, step and attempt (``stepstone[otel]``).
"""

from stepstone.observe.observer import Observer, Observers

__all__ = ["Observer", "Observers"]
