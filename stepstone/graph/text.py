"""A workflow diagram (:func:`stepstone.graph.workflow_graph`) drawn as indented text."""

from __future__ import annotations

import json
from typing import Any

_STEP = {"step_do": "do", "step_sleep": "sleep", "step_sleep_until": "sleep until", "step_wait_for_event": "wait"}


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _node(node: dict[str, Any], indent: int, out: list[str]) -> None:
    pad = "  " * indent
    kind = node.get("type")
    if kind == "step_do":
        retries = node.get("config", {}).get("retries", {})
        line = f"{pad}do {node.get('name')!r}  (retries {_value(retries.get('limit'))}, timeout "
        line += f"{_value(node.get('config', {}).get('timeout'))})"
        if node.get("depends"):
            line += "  after " + ", ".join(repr(d) for d in node["depends"])
        if node.get("rollback"):
            line += "  with rollback"
        out.append(line)
    elif kind == "step_sleep":
        out.append(f"{pad}sleep {node.get('name')!r}  {_value(node.get('duration'))}")
    elif kind == "step_sleep_until":
        out.append(f"{pad}sleep until {node.get('name')!r}  {_value(node.get('timestamp'))}")
    elif kind == "step_wait_for_event":
        options = node.get("options") or {}
        out.append(
            f"{pad}wait {node.get('name')!r}  for event {_value(options.get('event_type'))}, timeout "
            f"{_value(options.get('timeout'))}"
        )
    elif kind == "loop":
        out.append(f"{pad}loop:")
        _nodes(node.get("nodes", []), indent + 1, out)
    elif kind == "parallel":
        out.append(f"{pad}parallel ({node.get('kind')}):")
        for branch in node.get("nodes", []):
            out.append(f"{pad}  -")
            _node(branch, indent + 2, out)
    elif kind == "block":
        _nodes(node.get("nodes", []), indent, out)
    elif kind == "try":
        for label, key in (("try:", "try_block"), ("except:", "catch_block"), ("finally:", "finally_block")):
            if key in node:
                out.append(f"{pad}{label}")
                _nodes(node[key].get("nodes", []), indent + 1, out)
    elif kind in ("if", "switch"):
        if kind == "switch":
            out.append(f"{pad}match {node.get('discriminant')}:")
        for i, branch in enumerate(node.get("branches", [])):
            condition = branch.get("condition")
            if kind == "switch":
                label = f"  case {condition if condition is not None else '_'}:"
            else:
                label = f"{'if' if i == 0 else 'elif'} {condition}:" if condition is not None else "else:"
            out.append(f"{pad}{label}")
            _nodes(branch.get("nodes", []), indent + (2 if kind == "switch" else 1), out)
    elif kind == "function_call":
        name = str(node.get("name"))
        out.append(f"{pad}call {name}" + ("" if name.endswith(")") else "()"))
    elif kind == "break":
        out.append(f"{pad}{node.get('kind')}")
    else:
        out.append(f"{pad}{kind}")


def _nodes(nodes: list[dict[str, Any]], indent: int, out: list[str]) -> None:
    for node in nodes:
        _node(node, indent, out)


def graph_text(graph: dict[str, Any] | None) -> str:
    """The diagram as lines of text: ``run()`` first, then each function it calls."""
    if not graph:
        return "(no diagram: the workflow's source was not available when this version was registered)"
    workflow = graph.get("workflow", {})
    out = [f"{workflow.get('class_name')}.run:"]
    _nodes(workflow.get("nodes", []), 1, out)
    for name, fn in workflow.get("functions", {}).items():
        out.append(f"{name}:")
        _nodes(fn.get("nodes", []), 1, out)
    return "\n".join(out)
