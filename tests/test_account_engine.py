"""The Python API's side of accounts: the engine's bindings are the default account's, ``engine.account(id)``
gives another's, the worker runs every account's instances, and an instance's ``env`` bindings are its
account's (a child it creates lands in the same account)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stepstone import Engine, WorkflowEntrypoint
from stepstone.errors import InstanceNotFoundError, ValidationError, WorkflowNotFoundError
from stepstone.models import DEFAULT_ACCOUNT
from stepstone.testing import wait_for_status


class Parent(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        async def spawn() -> str:
            child = await self.env.CHILD.create(id=f"{event.instance_id}-child", params={"from": event.instance_id})
            return str(child.id)

        return await step.do("spawn", spawn)


class Child(WorkflowEntrypoint):
    async def run(self, event: Any, step: Any) -> Any:
        return await step.do("echo", lambda: event.payload)


async def test_accounts_through_the_python_api(db_url: str) -> None:
    async with Engine(db_url, poll_interval=0.05) as engine:
        engine.register(Parent, name="parent", binding="PARENT")
        engine.register(Child, name="child", binding="CHILD")
        acme = engine.account("acme")
        assert engine.workflow("parent").account == DEFAULT_ACCOUNT
        with pytest.raises(WorkflowNotFoundError):  # acme has not deployed it
            await acme.workflow("parent").create(id="p")
        for name, cls in (("parent", "Parent"), ("child", "Child")):
            await acme.put_workflow(name, class_name=cls, script_name="", config=json.dumps({}), now=1.0)
        local = await engine.workflow("parent").create(id="p")
        theirs = await acme.workflow("parent").create(id="p")  # the same id, another account: another instance
        assert (await wait_for_status(local, "complete")).output == "p-child"
        assert (await wait_for_status(theirs, "complete")).output == "p-child"
        # each parent's child is in the parent's account
        local_child = await engine.workflow("child").get("p-child")
        acme_child = await acme.workflow("child").get("p-child")
        assert (await local_child.record()).account == DEFAULT_ACCOUNT
        assert (await acme_child.record()).account == "acme"
        assert (await wait_for_status(acme_child, "complete")).output == {"from": "p"}
        # and nothing of one is reachable through the other
        await acme.workflow("parent").delete_instances(["p"])
        assert (await local.status()).status == "complete"
        with pytest.raises(InstanceNotFoundError):
            await acme.workflow("parent").get("p")
        assert sorted(w.name for w in await acme.list_workflows()) == ["child", "parent"]
        assert await acme.count_by_status("child") == {"complete": 1}
        assert await acme.delete_workflow("child") is True
        assert await engine.account(DEFAULT_ACCOUNT).count_by_status("child") == {"complete": 1}
        with pytest.raises(ValidationError, match="account id"):
            engine.account("no/slashes")
