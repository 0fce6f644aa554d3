"""The workflows a project declares: ``[[workflows]]`` bindings and ``[exports.ClassName]`` with
``type = "workflow"`` (Cloudflare's changelog 2026-09-24), checked and merged into one :class:`WorkflowConfig` each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from stepstone.config_check import Checker
from stepstone.divergence import ON_DIVERGENCE
from stepstone.limits import ID_PATTERN, MAX_STEPS

MAX_CPU_MS: Final[int] = 300_000
"""Cloudflare's highest ``limits.cpu_ms`` (5 minutes)."""
_SETTING_KEYS: Final[tuple[str, ...]] = (
    "limits",
    "schedules",
    "concurrency",
    "retention",
    "default_retention",
    "isolation",
    "on_divergence",
)
"""What a ``[[workflows]]`` binding and a workflow export both accept (Cloudflare's ``limits``, ``schedules``,
``default_retention`` and ``concurrency``; stepstone's ``retention``, ``isolation`` and ``on_divergence``)."""
_WORKFLOW_KEYS: Final[frozenset[str]] = frozenset({"name", "binding", "class_name", "script_name", *_SETTING_KEYS})
_EXPORT_KEYS: Final[frozenset[str]] = frozenset({"type", "name", *_SETTING_KEYS})
_LIMIT_KEYS: Final[frozenset[str]] = frozenset({"steps", "cpu_ms", "max_queued_instances", "creation_rate"})
EXPORT_TYPES: Final[tuple[str, ...]] = ("durable-object", "worker", "workflow")
"""The ``type`` of an ``exports`` entry Wrangler knows; stepstone runs the ``workflow`` ones."""


@dataclass(frozen=True, slots=True)
class WorkflowConfig:
    """One workflow the project declares: a ``[[workflows]]`` binding, an ``[exports.ClassName]`` entry, or both.

    A workflow declared only in ``exports`` has no ``binding`` (``""``): it is reached as ``ctx.exports.ClassName``
    in the Worker, ``engine.workflow(name)`` in Python, and by name over REST and in the CLI.
    """

    name: str
    binding: str
    """The ``env`` attribute of its binding; ``""`` for a workflow declared only in ``exports``."""
    class_name: str
    script_name: str = ""
    """Set when another project (sharing the database) defines the class: only the binding is made here."""
    steps: int | None = None
    """``limits.steps``; None keeps the engine's default."""
    schedules: tuple[str, ...] = ()
    """Cron expressions; each firing creates an instance."""
    concurrency: int | None = None
    """At most this many instances of the workflow run at once, over every worker on the database."""
    success_retention_ms: float | None = None
    """How long a completed instance is kept (``retention.success``); None keeps the project's default."""
    error_retention_ms: float | None = None
    """How long an errored or terminated instance is kept (``retention.error``)."""
    cpu_ms: int | None = None
    """``limits.cpu_ms`` (or the top-level ``[limits] cpu_ms``): CPU time per sync step attempt; None: no limit."""
    isolation: str = "thread"
    """``isolation``: where sync steps run, ``thread`` or ``process`` (killed on a timeout)."""
    on_divergence: str | None = None
    """``on_divergence``: ``record`` or ``fail`` (None: the class's own, else ``record``)."""
    limits: dict[str, Any] = field(default_factory=dict)
    """``limits.max_queued_instances`` and ``limits.creation_rate`` when given (None: off)."""
    exported: bool = False
    """Declared in ``exports`` (``[exports.<class_name>]`` with ``type = "workflow"``)."""


_NAME_RULE = "1-64 letters, digits, '_' or '-', not starting with '-'"
_BINDING_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _settings(c: Checker, entry: dict[str, Any], key: str, warnings: list[str]) -> dict[str, Any]:
    """The settings given in one declaration, as :class:`WorkflowConfig` fields (only those given)."""
    out: dict[str, Any] = {}
    if "limits" in entry:
        limits = c.table(entry["limits"], f"{key}.limits")
        for extra in sorted(set(limits) - _LIMIT_KEYS):
            warnings.append(f"{c.path.name}: {key}.limits: ignoring unknown key {extra}")
        if "steps" in limits:
            out["steps"] = c.integer(limits["steps"], f"{key}.limits.steps", high=MAX_STEPS)
        if "cpu_ms" in limits:
            out["cpu_ms"] = c.integer(limits["cpu_ms"], f"{key}.limits.cpu_ms", high=MAX_CPU_MS)
        extra_limits = {
            limit: c.limit(limits[limit], f"{key}.limits.{limit}", rate=limit == "creation_rate")
            for limit in ("max_queued_instances", "creation_rate")
            if limit in limits
        }
        if extra_limits:
            out["limits"] = extra_limits
    if "schedules" in entry:
        out["schedules"] = _schedules(c, entry["schedules"], f"{key}.schedules")
    if "concurrency" in entry:
        raw = entry["concurrency"]
        if isinstance(raw, dict):  # Cloudflare's shape, {limit = N}, works too
            for extra in sorted(set(raw) - {"limit"}):
                raise c.fail(f"{key}.concurrency.{extra}", "only the key limit", raw[extra])
            out["concurrency"] = c.integer(raw.get("limit"), f"{key}.concurrency.limit")
        else:
            out["concurrency"] = c.integer(raw, f"{key}.concurrency")
    if "retention" in entry and "default_retention" in entry:
        raise c.fail(f"{key}.default_retention", "either retention or default_retention, not both", "both")
    if "retention" in entry:
        out.update(c.retention(entry["retention"], f"{key}.retention"))
    if "default_retention" in entry:  # Wrangler's: {success_retention, error_retention}, durations or ms
        table = c.table(entry["default_retention"], f"{key}.default_retention")
        for extra in sorted(set(table) - {"success_retention", "error_retention"}):
            raise c.fail(f"{key}.default_retention.{extra}", "only success_retention and error_retention", table[extra])
        for side in ("success_retention", "error_retention"):
            if side in table:
                out[f"{side}_ms"] = c.duration(table[side], f"{key}.default_retention.{side}")
    if "isolation" in entry:
        isolation = c.string(entry["isolation"], f"{key}.isolation")
        if isolation not in ("thread", "process"):
            raise c.fail(f"{key}.isolation", '"thread" or "process"', isolation)
        out["isolation"] = isolation
    if "on_divergence" in entry:
        on_divergence = c.string(entry["on_divergence"], f"{key}.on_divergence")
        if on_divergence not in ON_DIVERGENCE:
            raise c.fail(f"{key}.on_divergence", '"record" or "fail"', on_divergence)
        out["on_divergence"] = on_divergence
    return out


def _schedules(c: Checker, raw: object, key: str) -> tuple[str, ...]:
    from stepstone.cron import CronError, parse_cron

    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        raise c.fail(key, "a cron string or a list of them", raw)
    schedules: list[str] = []
    for i, expr in enumerate(raw):
        k = f"{key}[{i}]"
        expr = c.string(expr, k)
        try:
            parse_cron(expr)
        except CronError as exc:
            raise c.fail(k, f"a 5-field cron expression ({exc})", expr) from None
        schedules.append(expr)
    return tuple(schedules)


def _name(c: Checker, value: object, key: str) -> str:
    name = c.string(value, key)
    if len(name) > 64 or not ID_PATTERN.match(name):
        raise c.fail(key, _NAME_RULE, name)
    return name


def _binding(c: Checker, raw: object, index: int, warnings: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A ``[[workflows]]`` entry: its identity (name, binding, class_name, script_name) and its settings."""
    key = f"workflows[{index}]"
    entry = c.table(raw, key)
    unknown = sorted(set(entry) - _WORKFLOW_KEYS)
    if unknown:
        warnings.append(f"{c.path.name}: {key}: ignoring unknown key(s) {', '.join(unknown)}")
    ident = {
        "name": _name(c, entry.get("name"), f"{key}.name"),
        "binding": c.string(entry.get("binding"), f"{key}.binding", pattern=_BINDING_RE, what="a Python identifier"),
        "class_name": c.string(entry.get("class_name"), f"{key}.class_name", pattern=_BINDING_RE, what="a class name"),
        "script_name": "",
    }
    if entry.get("script_name", "") != "":
        ident["script_name"] = c.string(entry["script_name"], f"{key}.script_name")
    return ident, _settings(c, entry, key, warnings)


def _exports(c: Checker, raw: object, warnings: list[str]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """The ``type = "workflow"`` entries of ``exports``: (key, identity, settings) each, in file order."""
    if not isinstance(raw, dict):
        raise c.fail("exports", "a table keyed by class name ([exports.MyWorkflow])", raw)
    found: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for class_name, value in raw.items():
        key = f"exports.{class_name}"
        if not isinstance(value, dict):
            raise c.fail(key, "a table", value)
        kind = value.get("type")
        if kind not in EXPORT_TYPES:
            raise c.fail(f"{key}.type", " or ".join(f'"{t}"' for t in EXPORT_TYPES), kind)
        if kind != "workflow":
            warnings.append(f"{c.path.name}: {key}: ignoring a {kind} export (stepstone runs workflows)")
            continue
        if not _BINDING_RE.match(class_name):
            raise c.fail(key, "a class name as the key ([exports.MyWorkflow])", class_name)
        unknown = sorted(set(value) - _EXPORT_KEYS)
        if unknown:
            warnings.append(f"{c.path.name}: {key}: ignoring unknown key(s) {', '.join(unknown)}")
        ident = {"name": _name(c, value.get("name"), f"{key}.name"), "class_name": class_name}
        found.append((key, ident, _settings(c, value, key, warnings)))
    return found


def parse_workflows(c: Checker, data: Mapping[str, Any], warnings: list[str]) -> tuple[WorkflowConfig, ...]:
    """Every workflow of a configuration: its ``[[workflows]]`` bindings, then the workflows only in ``exports``.

    Cloudflare's rules (changelog 2026-09-24): a workflow may be both a binding and an export, with the same class
    and no setting given different values in the two; a binding to a workflow of another Worker (``script_name``)
    cannot use the name of an export; workflow names are unique.
    """
    raw_workflows = data.get("workflows", [])
    if not isinstance(raw_workflows, list):
        raise c.fail("workflows", "a list of [[workflows]] tables", raw_workflows)
    bindings = [_binding(c, w, i, warnings) for i, w in enumerate(raw_workflows)]
    exports = _exports(c, data["exports"], warnings) if "exports" in data else []
    by_name = {ident["name"]: (i, ident, settings) for i, (ident, settings) in enumerate(bindings)}
    merged: dict[int, dict[str, Any]] = {}
    only_exported: list[WorkflowConfig] = []
    names: dict[str, str] = {}
    for key, ident, settings in exports:
        name = ident["name"]
        if name in names:
            raise c.fail(f"{key}.name", f"a workflow name not used by {names[name]} (names are unique)", name)
        names[name] = key
        if name not in by_name:
            only_exported.append(WorkflowConfig(name, "", ident["class_name"], exported=True, **settings))
            continue
        i, bound, bound_settings = by_name[name]
        where = f"workflows[{i}]"
        if bound["script_name"]:
            raise c.fail(
                f"{where}.name",
                f"a name other than the workflow {key} exports (a binding to another Worker's workflow cannot "
                "use the name of a workflow this Worker exports)",
                name,
            )
        if bound["class_name"] != ident["class_name"]:
            raise c.fail(
                f"{where}.class_name",
                f"{ident['class_name']!r}, the class of {key} (the same workflow)",
                bound["class_name"],
            )
        for field_name in sorted(set(settings) & set(bound_settings)):
            if settings[field_name] != bound_settings[field_name]:
                raise c.fail(
                    f"{key}.{_SOURCE.get(field_name, field_name)}",
                    f"the value {where} gives it, {bound_settings[field_name]!r} (a workflow declared as a binding "
                    "and an export cannot set one setting to different values)",
                    settings[field_name],
                )
        merged[i] = {**settings, **bound_settings}
    workflows = [
        WorkflowConfig(
            ident["name"],
            ident["binding"],
            ident["class_name"],
            ident["script_name"],
            exported=i in merged,
            **merged.get(i, settings),
        )
        for i, (ident, settings) in enumerate(bindings)
    ]
    return (*workflows, *only_exported)


_SOURCE: Final[dict[str, str]] = {
    "steps": "limits.steps",
    "cpu_ms": "limits.cpu_ms",
    "success_retention_ms": "default_retention.success_retention",
    "error_retention_ms": "default_retention.error_retention",
}
"""Where a WorkflowConfig field comes from in the file, for messages."""
