"""A workflow's diagram from the ``ast`` of its ``run()`` and the functions it calls.

The shape is Cloudflare's ``GET …/versions/{id}/graph`` (the ``cloudflare`` SDK's ``VersionGraphResponse``):
``{"version": 1, "workflow": {"class_name", "functions", "nodes", "payload"}}`` where each node has a ``type``:

- ``step_do`` ``{name, config: {retries: {limit, delay, backoff}, timeout}, nodes}``: ``step.do`` in any form;
  the decorator form's dependencies (``depends=[...]`` or the implicit parameters named after earlier steps)
  run first, and the node lists them in ``depends`` (stepstone's field: the DAG's edges);
- ``step_sleep`` ``{name, duration}``, ``step_sleep_until`` ``{name, timestamp}``,
  ``step_wait_for_event`` ``{name, options: {event_type, timeout}}``;
- ``loop`` (``for``, ``while``, a comprehension over steps) and ``break`` ``{kind: break|return}`` inside it;
- ``parallel`` ``{kind: all|all_settled|race, nodes}``: ``asyncio.gather`` (``all_settled`` with
  ``return_exceptions=True``), an ``asyncio.TaskGroup`` block, ``asyncio.wait`` (``race`` when it returns at the
  first completed);
- ``try`` ``{try_block, catch_block, finally_block}`` of ``block`` nodes; ``if`` ``{branches: [{condition,
  nodes}]}`` (``condition`` None for ``else``); ``switch`` ``{discriminant, branches}`` for ``match``;
- ``function_call`` ``{name}`` to a function of the workflow (a method, a module function or one defined in
  ``run()``) whose body has steps; its body is ``functions[name]``, a ``function_def`` ``{name, nodes}``.

Values the code computes (an f-string step name, a duration in a variable) appear as their source text.
Only constructs that reach a step are drawn; everything else is left out.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Final

from stepstone import pysource

GRAPH_VERSION: Final = 1
DEFAULT_CONFIG: Final[dict[str, Any]] = {
    "retries": {"limit": 5, "delay": 10000, "backoff": "exponential"},
    "timeout": "10 minutes",
}
"""Cloudflare's step defaults, shown for a step written without a config (and for missing fields)."""
DEFAULT_EVENT_TIMEOUT: Final = "24 hours"

Node = dict[str, Any]


@dataclass
class _Declared:
    """A step declared with the decorator form, drawn where it is awaited."""

    name: str
    config: dict[str, Any]
    depends: list[str]
    concurrent: bool
    rollback: bool = False
    """Declared with ``step.with_rollback``: it has an undo handler."""


@dataclass
class _Scope:
    """What one function body being drawn knows."""

    step_vars: set[str]
    declared: dict[str, _Declared] = field(default_factory=dict)
    """Decorated step functions by variable name."""
    by_step_name: dict[str, str] = field(default_factory=dict)
    """Variable name of a decorated step by its step name (the implicit-dependency form)."""
    emitted: set[str] = field(default_factory=set)
    """Decorated steps already drawn in this body (a dependency runs once)."""
    local_defs: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    loops: int = 0


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ast.unparse(node)


def _text(node: ast.AST | None) -> str:
    if node is None:
        return ""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):  # f"item {i}" reads as its template: item {i}
        return "".join(
            str(v.value) if isinstance(v, ast.Constant) else "{" + ast.unparse(v.value) + "}"
            for v in node.values
            if isinstance(v, ast.Constant | ast.FormattedValue)
        )
    return ast.unparse(node)


def _config(node: ast.AST | None) -> dict[str, Any]:
    config: dict[str, Any] = {"retries": dict(DEFAULT_CONFIG["retries"]), "timeout": DEFAULT_CONFIG["timeout"]}
    if node is None or (isinstance(node, ast.Constant) and node.value is None):
        return config
    given = _literal(node)
    if not isinstance(given, dict):
        config["source"] = ast.unparse(node)
        return config
    retries = given.get("retries")
    if isinstance(retries, dict):
        config["retries"].update({k: v for k, v in retries.items() if k in ("limit", "delay", "backoff")})
    if "timeout" in given:
        config["timeout"] = given["timeout"]
    return config


def _kwarg(call: ast.Call, name: str) -> ast.expr | None:
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


class _Builder:
    def __init__(self, cls: type, tree: ast.Module, class_node: ast.ClassDef) -> None:
        self.cls = cls
        self.module_defs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        self.methods = {n.name: n for n in class_node.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
        self.constants = {
            n.targets[0].id: n.value
            for n in tree.body
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)
        }
        self.functions: dict[str, Node] = {}
        self.factories: dict[str, _Declared] = {}
        """Functions that declare a decorated step and return it (``make_step(step, ...)()`` runs it)."""
        self._drawing: set[str] = set()
        self.payload_fields: dict[str, Node] = {}
        self.event_vars: set[str] = set()

    def constant(self, node: ast.expr | None) -> ast.expr | None:
        """A module-level constant's value in place of its name (``RETRIES = {...}``), else the node itself."""
        if isinstance(node, ast.Name) and node.id in self.constants:
            return self.constants[node.id]
        return node

    # -- functions ----------------------------------------------------------------------------------------
    def function(self, name: str, fn: ast.FunctionDef | ast.AsyncFunctionDef, step_vars: set[str]) -> bool:
        """Draw ``fn`` into ``functions[name]`` once; whether it has any node."""
        if name in self.functions:
            return True
        if name in self._drawing:
            return False  # recursion: drawn by the outer call
        self._drawing.add(name)
        annotated = {
            a.arg
            for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs)
            if a.annotation is not None and "WorkflowStep" in ast.unparse(a.annotation)
        }
        scope = _Scope(step_vars=step_vars | annotated)
        nodes = self.body(fn.body, scope) if scope.step_vars else []
        for statement in fn.body:
            if (
                isinstance(statement, ast.Return)
                and isinstance(statement.value, ast.Name)
                and statement.value.id in scope.declared
            ):
                self.factories[name] = scope.declared[statement.value.id]
        self._drawing.discard(name)
        if not nodes:
            return False
        self.functions[name] = {"type": "function_def", "name": name, "nodes": nodes}
        return True

    def call_target(self, func: ast.expr, scope: _Scope) -> tuple[str, ast.FunctionDef | ast.AsyncFunctionDef] | None:
        if isinstance(func, ast.Name):
            fn = scope.local_defs.get(func.id) or self.module_defs.get(func.id)
            return (func.id, fn) if fn is not None else None
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("self", "cls"):
            method = self.methods.get(func.attr)
            return (func.attr, method) if method is not None else None
        return None

    # -- statements ---------------------------------------------------------------------------------------
    def body(self, statements: list[ast.stmt], scope: _Scope) -> list[Node]:
        nodes: list[Node] = []
        for statement in statements:
            nodes.extend(self.statement(statement, scope))
        return nodes

    def statement(self, s: ast.stmt, scope: _Scope) -> list[Node]:
        if isinstance(s, ast.FunctionDef | ast.AsyncFunctionDef):
            return self.definition(s, scope)
        if isinstance(s, ast.If):
            return self.if_node(s, scope)
        if isinstance(s, ast.For | ast.AsyncFor | ast.While):
            head = self.expr(s.iter if isinstance(s, ast.For | ast.AsyncFor) else s.test, scope)
            scope.loops += 1
            inner = self.body(s.body, scope)
            scope.loops -= 1
            inner += self.body(s.orelse, scope)
            return head + ([{"type": "loop", "nodes": inner}] if inner else [])
        if isinstance(s, ast.Try | ast.TryStar):
            return self.try_node(s, scope)
        if isinstance(s, ast.Match):
            return self.switch_node(s, scope)
        if isinstance(s, ast.With | ast.AsyncWith):
            return self.with_node(s, scope)
        if isinstance(s, ast.Break) and scope.loops:
            return [{"type": "break", "kind": "break"}]
        if isinstance(s, ast.Return):
            nodes = self.expr(s.value, scope) if s.value is not None else []
            return nodes + ([{"type": "break", "kind": "return"}] if scope.loops else [])
        nodes = []
        for child in ast.iter_child_nodes(s):
            if isinstance(child, ast.expr):
                nodes.extend(self.expr(child, scope))
        return nodes

    def definition(self, fn: ast.FunctionDef | ast.AsyncFunctionDef, scope: _Scope) -> list[Node]:
        for deco in fn.decorator_list:
            declared = self.declared_step(deco, fn, scope)
            if declared is not None:
                scope.declared[fn.name] = declared
                scope.by_step_name[declared.name] = fn.name
                return []
        scope.local_defs[fn.name] = fn
        return []

    def declared_step(
        self, deco: ast.expr, fn: ast.FunctionDef | ast.AsyncFunctionDef, scope: _Scope
    ) -> _Declared | None:
        call = deco if isinstance(deco, ast.Call) else None
        target = call.func if call is not None else deco
        if not (
            isinstance(target, ast.Attribute)
            and target.attr in ("do", "with_rollback")
            and self.is_step(target.value, scope)
        ):
            return None
        name = _text(call.args[0]) if call is not None and call.args else fn.name
        config_node = _kwarg(call, "config") if call is not None else None
        if config_node is None and call is not None and target.attr == "with_rollback" and len(call.args) > 1:
            config_node = call.args[1]
        config = _config(self.constant(config_node))
        depends: list[str] = []
        given = _kwarg(call, "depends") if call is not None else None
        if isinstance(given, ast.List | ast.Tuple):
            depends = [_text(e) for e in given.elts]
        else:
            params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args) if a.arg != "ctx"]
            depends = [p for p in params if p in scope.by_step_name or p in scope.declared]
        concurrent = _kwarg(call, "concurrent") if call is not None else None
        declared = _Declared(name, config, depends, isinstance(concurrent, ast.Constant) and concurrent.value is True)
        declared.rollback = target.attr == "with_rollback"
        return declared

    def if_node(self, s: ast.If, scope: _Scope) -> list[Node]:
        head: list[Node] = []
        branches: list[Node] = []
        current: ast.stmt | None = s
        while isinstance(current, ast.If):
            head += self.expr(current.test, scope)
            branches.append({"condition": ast.unparse(current.test), "nodes": self.body(current.body, scope)})
            orelse = current.orelse
            current = orelse[0] if len(orelse) == 1 and isinstance(orelse[0], ast.If) else None
            if current is None and orelse:
                branches.append({"condition": None, "nodes": self.body(orelse, scope)})
        if not any(b["nodes"] for b in branches):
            return head
        return [*head, {"type": "if", "branches": branches}]

    def try_node(self, s: ast.Try | ast.TryStar, scope: _Scope) -> list[Node]:
        tried = self.body(s.body, scope) + self.body(s.orelse, scope)
        handlers = [(h, self.body(h.body, scope)) for h in s.handlers]
        final = self.body(s.finalbody, scope)
        if not tried and not final and not any(n for _, n in handlers):
            return []
        node: Node = {"type": "try", "try_block": {"type": "block", "nodes": tried}}
        if handlers:
            if len(handlers) == 1:
                caught = handlers[0][1]
            else:
                caught = [
                    {
                        "type": "if",
                        "branches": [
                            {"condition": f"except {ast.unparse(h.type)}" if h.type else None, "nodes": n}
                            for h, n in handlers
                        ],
                    }
                ]
            node["catch_block"] = {"type": "block", "nodes": caught}
        if s.finalbody:
            node["finally_block"] = {"type": "block", "nodes": final}
        return [node]

    def switch_node(self, s: ast.Match, scope: _Scope) -> list[Node]:
        head = self.expr(s.subject, scope)
        branches: list[Node] = []
        for case in s.cases:
            wildcard = isinstance(case.pattern, ast.MatchAs) and case.pattern.pattern is None and case.guard is None
            condition = None if wildcard else ast.unparse(case.pattern)
            if case.guard is not None:
                condition = f"{condition} if {ast.unparse(case.guard)}"
            branches.append({"condition": condition, "nodes": self.body(case.body, scope)})
        if not any(b["nodes"] for b in branches):
            return head
        return [*head, {"type": "switch", "discriminant": ast.unparse(s.subject), "branches": branches}]

    def with_node(self, s: ast.With | ast.AsyncWith, scope: _Scope) -> list[Node]:
        head: list[Node] = []
        groups: list[str] = []
        for item in s.items:
            expr = item.context_expr
            if isinstance(expr, ast.Call) and ast.unparse(expr.func).endswith("TaskGroup"):
                if isinstance(item.optional_vars, ast.Name):
                    groups.append(item.optional_vars.id)
                continue
            head += self.expr(expr, scope)
        if not groups:
            return head + self.body(s.body, scope)
        branches: list[Node] = []
        after: list[Node] = []
        for statement in s.body:
            task = _create_task(statement, groups)
            if task is not None:
                branches += _branch(self.expr(task, scope))
            else:
                after += self.statement(statement, scope)
        nodes = head + ([{"type": "parallel", "kind": "all", "nodes": branches}] if branches else [])
        return nodes + after

    # -- expressions --------------------------------------------------------------------------------------
    def is_step(self, node: ast.expr, scope: _Scope) -> bool:
        return isinstance(node, ast.Name) and node.id in scope.step_vars

    def expr(self, e: ast.expr | None, scope: _Scope) -> list[Node]:
        if e is None:
            return []
        if isinstance(e, ast.Call):
            return self.call(e, scope)
        if isinstance(e, ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp):
            inner: list[Node] = []
            for gen in e.generators:
                inner += self.expr(gen.iter, scope)
            elements = [e.key, e.value] if isinstance(e, ast.DictComp) else [e.elt]
            looped = [n for el in elements for n in self.expr(el, scope)]
            return inner + ([{"type": "loop", "nodes": looped}] if looped else [])
        if isinstance(e, ast.Lambda):
            return []
        nodes: list[Node] = []
        for child in ast.iter_child_nodes(e):
            if isinstance(child, ast.expr):
                nodes.extend(self.expr(child, scope))
        return nodes

    def note_payload(self, e: ast.Subscript) -> None:
        base = e.value
        if (
            isinstance(base, ast.Attribute)
            and base.attr == "payload"
            and isinstance(base.value, ast.Name)
            and base.value.id in self.event_vars
            and isinstance(e.slice, ast.Constant)
            and isinstance(e.slice.value, str)
        ):
            self.payload_fields.setdefault(e.slice.value, {"type": "unknown"})

    def call(self, c: ast.Call, scope: _Scope) -> list[Node]:
        func = c.func
        if isinstance(func, ast.Attribute) and self.is_step(func.value, scope):
            return self.step_call(func.attr, c, scope)
        if isinstance(func, ast.Name) and func.id in scope.declared:
            return self.await_declared(func.id, scope)
        if isinstance(func, ast.Call):  # make_step(step, ...)(): the step a factory function declares
            maker = self.call_target(func.func, scope)
            if maker is not None:
                head = [n for a in func.args for n in self.expr(a, scope)]
                drawn = self.function(maker[0], maker[1], self.passed_step(func, maker, scope))
                made = self.factories.get(maker[0])
                if made is not None:
                    step_node: Node = {"type": "step_do", "name": made.name, "config": made.config, "nodes": []}
                    if made.rollback:
                        step_node["rollback"] = True
                    return [*head, step_node]
                if drawn:
                    return [*head, {"type": "function_call", "name": maker[0]}]
                return head
        dotted = ast.unparse(func)
        if dotted in ("asyncio.gather", "gather"):
            kind = "all_settled" if _is_true(_kwarg(c, "return_exceptions")) else "all"
            return self.parallel(kind, c.args, scope)
        if dotted in ("asyncio.wait", "wait") and c.args:
            when = _kwarg(c, "return_when")
            kind = "race" if when is not None and "FIRST" in ast.unparse(when) else "all"
            return self.parallel(kind, c.args, scope)
        head = [n for a in (*c.args, *(k.value for k in c.keywords)) for n in self.expr(a, scope)]
        target = self.call_target(func, scope)
        if target is not None and self.function(target[0], target[1], self.passed_step(c, target, scope)):
            return [*head, {"type": "function_call", "name": target[0]}]
        if isinstance(func, ast.Attribute):
            head = self.expr(func.value, scope) + head
        return head

    def passed_step(
        self, c: ast.Call, target: tuple[str, ast.FunctionDef | ast.AsyncFunctionDef], scope: _Scope
    ) -> set[str]:
        """The names under which ``fn`` sees the step object at this call: the parameters it is passed in, and
        for a function defined in the calling body (a closure) the caller's own names not shadowed by one."""
        name, fn = target
        params = [a.arg for a in (*fn.args.posonlyargs, *fn.args.args)]
        closure = scope.step_vars - set(params) if scope.local_defs.get(name) is fn else set()
        if params and params[0] in ("self", "cls"):
            params = params[1:]
        names = {params[i] for i, a in enumerate(c.args) if i < len(params) and self.is_step(a, scope)}
        names |= {k.arg for k in c.keywords if k.arg is not None and self.is_step(k.value, scope)}
        return names | closure | (scope.step_vars & set(params))

    def parallel(self, kind: str, args: list[ast.expr], scope: _Scope) -> list[Node]:
        branches: list[Node] = []
        for arg in args:
            inner = arg.value if isinstance(arg, ast.Starred) else arg
            branches += _branch(self.expr(inner, scope))
        return [{"type": "parallel", "kind": kind, "nodes": branches}] if branches else []

    def await_declared(self, var: str, scope: _Scope) -> list[Node]:
        declared = scope.declared[var]
        nodes: list[Node] = []
        deps: list[Node] = []
        for dep in declared.depends:
            dep_var = dep if dep in scope.declared else scope.by_step_name.get(dep)
            if dep_var is not None and dep_var not in scope.emitted:
                deps += self.await_declared(dep_var, scope)
        if declared.concurrent and len(deps) > 1:
            nodes.append({"type": "parallel", "kind": "all", "nodes": deps})
        else:
            nodes += deps
        scope.emitted.add(var)
        dep_names = [scope.declared[d].name if d in scope.declared else d for d in declared.depends]
        node: Node = {"type": "step_do", "name": declared.name, "config": declared.config, "nodes": []}
        if dep_names:
            node["depends"] = dep_names
        if declared.rollback:
            node["rollback"] = True
        nodes.append(node)
        return nodes

    def step_call(self, method: str, c: ast.Call, scope: _Scope) -> list[Node]:
        args = c.args
        name = _text(args[0]) if args else _text(_kwarg(c, "name"))
        head = [n for a in args[1:] for n in self.expr(a, scope) if not isinstance(a, ast.Lambda)]
        if method == "do":
            if len(args) == 1 and not c.keywords and isinstance(args[0], ast.Name) and args[0].id in scope.local_defs:
                name = args[0].id  # step.do(fn): named after the function
            config_node = args[1] if len(args) >= 3 else _kwarg(c, "config")
            return [{"type": "step_do", "name": name, "config": _config(self.constant(config_node)), "nodes": []}]
        if method == "sleep":
            duration = args[1] if len(args) > 1 else _kwarg(c, "duration")
            return [*head, {"type": "step_sleep", "name": name, "duration": _duration(duration)}]
        if method == "sleep_until":
            when = args[1] if len(args) > 1 else _kwarg(c, "timestamp")
            return [*head, {"type": "step_sleep_until", "name": name, "timestamp": _text(when)}]
        if method == "wait_for_event":
            return [*head, _wait(name, c)]
        if method == "run_workflow":
            return [*head, {"type": "function_call", "name": f"run_workflow({name})"}]
        if method == "rollback_all":
            return [*head, {"type": "function_call", "name": "rollback_all"}]
        return head


def _duration(node: ast.AST | None) -> Any:
    value = _literal(node) if node is not None else ""
    return value if isinstance(value, int | float | str) and not isinstance(value, bool) else ast.unparse(node)  # type: ignore[arg-type]


def _wait(name: str, c: ast.Call) -> Node:
    args = c.args
    event_type: Any = None
    timeout: Any = DEFAULT_EVENT_TIMEOUT
    second = args[1] if len(args) > 1 else _kwarg(c, "event_type") or _kwarg(c, "type")
    if isinstance(second, ast.Dict):
        given = _literal(second)
        if isinstance(given, dict):
            event_type = given.get("type", given.get("event"))
            timeout = given.get("timeout", timeout)
        else:
            event_type = ast.unparse(second)
    elif second is not None:
        event_type = _text(second)
    given_timeout = _kwarg(c, "timeout")
    if given_timeout is not None:
        timeout = _duration(given_timeout)
    return {"type": "step_wait_for_event", "name": name, "options": {"event_type": event_type, "timeout": timeout}}


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _branch(nodes: list[Node]) -> list[Node]:
    if not nodes:
        return []
    return nodes if len(nodes) == 1 else [{"type": "block", "nodes": nodes}]


def _create_task(statement: ast.stmt, groups: list[str]) -> ast.expr | None:
    value = statement.value if isinstance(statement, ast.Expr | ast.Assign | ast.AnnAssign) else None
    if (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr == "create_task"
        and isinstance(value.func.value, ast.Name)
        and value.func.value.id in groups
        and value.args
    ):
        return value.args[0]
    return None


def _class_node(cls: type) -> tuple[ast.Module, ast.ClassDef] | None:
    try:
        lines, _ = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return None
    try:
        tree = pysource.parse(textwrap.dedent("".join(lines)))
    except SyntaxError:
        return None
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if node is None:
        return None
    module = inspect.getmodule(cls)
    try:
        module_tree = pysource.parse(inspect.getsource(module)) if module is not None else ast.Module([], [])
    except (OSError, TypeError, SyntaxError):
        module_tree = ast.Module([], [])
    return module_tree, node


def workflow_graph(cls: type, *, class_name: str | None = None) -> dict[str, Any] | None:
    """The diagram of ``cls.run`` (Cloudflare's graph payload), or None when its source cannot be read."""
    found = _class_node(cls)
    if found is None:
        return None
    module_tree, class_node = found
    builder = _Builder(cls, module_tree, class_node)
    run = builder.methods.get("run")
    if run is None:
        for klass in cls.__mro__[1:]:
            parent = _class_node(klass) if "run" in vars(klass) else None
            if parent is not None:
                builder = _Builder(cls, parent[0], parent[1])
                run = builder.methods.get("run")
                break
    if run is None:
        return None
    params = [a.arg for a in run.args.args]
    builder.event_vars = {params[1]} if len(params) > 1 else set()
    step_vars = {params[2]} if len(params) > 2 else {"step"}
    nodes = builder.body(run.body, _Scope(step_vars=step_vars))
    for sub in ast.walk(run):
        if isinstance(sub, ast.Subscript):
            builder.note_payload(sub)
    payload: Node = (
        {"type": "object", "fields": builder.payload_fields} if builder.payload_fields else {"type": "unknown"}
    )
    return {
        "version": GRAPH_VERSION,
        "workflow": {
            "class_name": class_name or cls.__name__,
            "functions": builder.functions,
            "nodes": nodes,
            "payload": payload,
        },
    }
