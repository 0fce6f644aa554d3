"""The Python workflow diagram (``stepstone.graph``): Cloudflare's graph JSON drawn from the ``ast`` of ``run()``
and the functions it calls, checked on the seed's four common patterns (written in Python), every example
project, each control-flow construct, and through the ``cloudflare`` SDK's own graph types."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
from cloudflare.types.workflows.version_graph_response import Graph

from stepstone import WorkflowEntrypoint
from stepstone.graph import graph_text, workflow_graph

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = {"retries": {"limit": 5, "delay": 10000, "backoff": "exponential"}, "timeout": "10 minutes"}


def do(name: str, config: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "step_do", "name": name, "config": config or DEFAULT, "nodes": [], **extra}


def nodes(cls: type) -> list[dict[str, Any]]:
    graph = workflow_graph(cls)
    assert graph is not None
    Graph.model_validate(graph)  # the SDK's model of Cloudflare's graph accepts it
    result: list[dict[str, Any]] = graph["workflow"]["nodes"]
    return result


# -- the seed's four common patterns, as a Python user writes them ------------------------------------------
class ImageProcessingWorkflow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        image = await step.do("fetch image", lambda: self.env.BUCKET.get(event.payload["imageKey"]))
        await step.do("generate description", lambda: len(image))
        await step.wait_for_event("await approval", {"type": "approved", "timeout": "24 hours"})
        await step.do("publish", lambda: self.env.BUCKET.put(f"public/{event.payload['imageKey']}", image))


class UserLifecycleWorkflow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("send welcome email", lambda: None)
        await step.sleep("wait for trial period", "7 days")
        converted = await step.do("check conversion", lambda: False)
        if not converted:
            await step.do("send trial expiration email", lambda: None)


class DataPipelineWorkflow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        raw = await step.do(
            "extract data",
            {"retries": {"limit": 10, "delay": "30 seconds", "backoff": "exponential"}, "timeout": "5 minutes"},
            lambda: [],
        )
        transformed = await step.do("transform data", lambda: raw)
        await step.do("store transformed data", lambda: {"key": len(transformed)})
        await step.do("load to database", {"retries": {"limit": 5, "delay": "1 minute", "backoff": "linear"}}, list)


class ApprovalWorkflow(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        await step.do("create approval request", lambda: None)
        try:
            approval = await step.wait_for_event("wait for approval", "approval-response", timeout="48 hours")
            if approval.payload["approved"]:
                await step.do("process approval", lambda: None)
            else:
                await step.do("handle rejection", lambda: None)
        except Exception:
            await step.do("auto reject", lambda: None)


def test_the_seeds_four_patterns() -> None:
    assert nodes(ImageProcessingWorkflow) == [
        do("fetch image"),
        do("generate description"),
        {
            "type": "step_wait_for_event",
            "name": "await approval",
            "options": {"event_type": "approved", "timeout": "24 hours"},
        },
        do("publish"),
    ]
    graph = workflow_graph(ImageProcessingWorkflow)
    assert graph is not None and graph["version"] == 1
    assert graph["workflow"]["payload"] == {"type": "object", "fields": {"imageKey": {"type": "unknown"}}}

    assert nodes(UserLifecycleWorkflow) == [
        do("send welcome email"),
        {"type": "step_sleep", "name": "wait for trial period", "duration": "7 days"},
        do("check conversion"),
        {"type": "if", "branches": [{"condition": "not converted", "nodes": [do("send trial expiration email")]}]},
    ]
    assert nodes(DataPipelineWorkflow) == [
        do(
            "extract data",
            {"retries": {"limit": 10, "delay": "30 seconds", "backoff": "exponential"}, "timeout": "5 minutes"},
        ),
        do("transform data"),
        do("store transformed data"),
        do(
            "load to database",
            {"retries": {"limit": 5, "delay": "1 minute", "backoff": "linear"}, "timeout": "10 minutes"},
        ),
    ]
    wait = {
        "type": "step_wait_for_event",
        "name": "wait for approval",
        "options": {"event_type": "approval-response", "timeout": "48 hours"},
    }
    decision = {
        "type": "if",
        "branches": [
            {"condition": "approval.payload['approved']", "nodes": [do("process approval")]},
            {"condition": None, "nodes": [do("handle rejection")]},
        ],
    }
    assert nodes(ApprovalWorkflow) == [
        do("create approval request"),
        {
            "type": "try",
            "try_block": {"type": "block", "nodes": [wait, decision]},
            "catch_block": {"type": "block", "nodes": [do("auto reject")]},
        },
    ]


# -- constructs --------------------------------------------------------------------------------------------
async def notify(step: Any, who: str) -> None:
    await step.do(f"notify {who}", lambda: None)


def plain_helper(x: int) -> int:
    return x + 1


class Everything(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        plain_helper(1)  # no step inside: not drawn
        await asyncio.gather(step.do("a", list), step.do("b", list))
        await asyncio.gather(*[step.do(f"item {i}", list) for i in range(3)], return_exceptions=True)
        async with asyncio.TaskGroup() as tg:
            tg.create_task(step.do("in group", list))
            tg.create_task(self.branch(step))
        for i in range(event.payload["n"]):
            await step.sleep(f"pause {i}", 1000)
            if i > 2:
                break
        while True:
            done = await step.do("poll", list)
            if done:
                return done
        match event.payload["kind"]:
            case "gold":
                await step.sleep_until("until gold", event.payload["at"])
            case _:
                await notify(step, "others")
        try:
            await step.do("risky", list)
        except ValueError:
            await step.do("on value error", list)
        except KeyError:
            await step.do("on key error", list)
        finally:
            await step.do("cleanup", list)

    async def branch(self, step: Any) -> None:
        await step.do("in branch", list)


def test_every_construct_with_cloudflare_node_types() -> None:
    drawn = nodes(Everything)
    assert [n["type"] for n in drawn] == ["parallel", "parallel", "parallel", "loop", "loop", "switch", "try"]
    assert drawn[0] == {"type": "parallel", "kind": "all", "nodes": [do("a"), do("b")]}
    assert drawn[1] == {
        "type": "parallel",
        "kind": "all_settled",
        "nodes": [{"type": "loop", "nodes": [do("item {i}")]}],
    }
    assert drawn[2] == {
        "type": "parallel",
        "kind": "all",
        "nodes": [do("in group"), {"type": "function_call", "name": "branch"}],
    }
    assert drawn[3] == {
        "type": "loop",
        "nodes": [
            {"type": "step_sleep", "name": "pause {i}", "duration": 1000},
            {"type": "if", "branches": [{"condition": "i > 2", "nodes": [{"type": "break", "kind": "break"}]}]},
        ],
    }
    assert drawn[4]["nodes"][0] == do("poll")
    assert drawn[4]["nodes"][1]["branches"][0]["nodes"] == [{"type": "break", "kind": "return"}]
    assert drawn[5] == {
        "type": "switch",
        "discriminant": "event.payload['kind']",
        "branches": [
            {
                "condition": "'gold'",
                "nodes": [{"type": "step_sleep_until", "name": "until gold", "timestamp": "event.payload['at']"}],
            },
            {"condition": None, "nodes": [{"type": "function_call", "name": "notify"}]},
        ],
    }
    assert drawn[6]["try_block"]["nodes"] == [do("risky")]
    assert drawn[6]["catch_block"]["nodes"][0]["branches"] == [
        {"condition": "except ValueError", "nodes": [do("on value error")]},
        {"condition": "except KeyError", "nodes": [do("on key error")]},
    ]
    assert drawn[6]["finally_block"] == {"type": "block", "nodes": [do("cleanup")]}
    graph = workflow_graph(Everything)
    assert graph is not None
    assert graph["workflow"]["functions"] == {
        "branch": {"type": "function_def", "name": "branch", "nodes": [do("in branch")]},
        "notify": {"type": "function_def", "name": "notify", "nodes": [do("notify {who}")]},
    }
    text = graph_text(graph)
    assert "parallel (all_settled):" in text and "match event.payload['kind']:" in text
    assert "call notify()" in text and "notify:\n  do 'notify {who}'" in text


class Dag(WorkflowEntrypoint):
    """Cloudflare's Python DAG forms: ``depends=`` (with ``concurrent``) and the implicit parameters."""

    async def run(self, event: Any, step: Any) -> Any:
        @step.do("fetch user")
        async def fetch_user() -> dict[str, Any]:
            return {}

        @step.do("fetch plan", config={"retries": {"limit": 1}})
        async def fetch_plan() -> dict[str, Any]:
            return {}

        @step.do("bill", depends=[fetch_user, fetch_plan], concurrent=True)
        async def bill(user: Any, plan: Any) -> None:
            return None

        @step.do()
        async def receipt(bill: Any, ctx: Any) -> None:  # implicit: a parameter named after an earlier step
            return None

        await bill()
        await receipt()


def test_the_decorator_forms_dependencies_are_edges() -> None:
    one_retry = {"retries": {"limit": 1, "delay": 10000, "backoff": "exponential"}, "timeout": "10 minutes"}
    assert nodes(Dag) == [
        {"type": "parallel", "kind": "all", "nodes": [do("fetch user"), do("fetch plan", one_retry)]},
        do("bill", depends=["fetch user", "fetch plan"]),
        do("receipt", depends=["bill"]),
    ]
    assert "do 'bill'  (retries 5, timeout 10 minutes)  after 'fetch user', 'fetch plan'" in graph_text(
        workflow_graph(Dag)
    )


SAGA_RETRIES = {"retries": {"limit": 2, "delay": "1 second", "backoff": "constant"}}


def book_step(step: Any, what: str) -> Any:
    @step.with_rollback(f"book {what}", SAGA_RETRIES)
    async def book() -> str:
        return what

    @book.undo
    async def cancel(error: Any, booking: str) -> None:
        return None

    return book


class Saga(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        try:
            await book_step(step, "flight")()
        except Exception as exc:
            await step.rollback_all(exc)
            raise


def test_saga_steps_from_a_factory_and_rollback_all() -> None:
    retries = {"retries": {"limit": 2, "delay": "1 second", "backoff": "constant"}, "timeout": "10 minutes"}
    assert nodes(Saga) == [
        {
            "type": "try",
            "try_block": {"type": "block", "nodes": [do("book {what}", retries, rollback=True)]},
            "catch_block": {"type": "block", "nodes": [{"type": "function_call", "name": "rollback_all"}]},
        }
    ]
    assert "do 'book {what}'  (retries 2, timeout 10 minutes)  with rollback" in graph_text(workflow_graph(Saga))


def _example_classes() -> list[type]:
    found: list[type] = []
    for path in sorted((ROOT / "examples").glob("*/*.py")):
        name = f"graph_example_{path.parent.name.replace('-', '_')}_{path.stem}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        found += [
            v
            for v in vars(module).values()
            if isinstance(v, type) and issubclass(v, WorkflowEntrypoint) and v.__module__ == name
        ]
    return found


@pytest.mark.parametrize("cls", _example_classes(), ids=lambda c: c.__name__)
def test_every_example_is_drawn(cls: type) -> None:
    drawn = nodes(cls)
    assert drawn, f"{cls.__name__}: no nodes"
    text = graph_text(workflow_graph(cls))
    assert text.startswith(f"{cls.__name__}.run:") and "do '" in text


def test_code_without_source_has_no_diagram() -> None:
    namespace: dict[str, Any] = {"WorkflowEntrypoint": WorkflowEntrypoint}
    exec("class Made(WorkflowEntrypoint):\n    async def run(self, event, step):\n        pass\n", namespace)
    assert workflow_graph(namespace["Made"]) is None
    assert "no diagram" in graph_text(None)
