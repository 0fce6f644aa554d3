"""Where CLI commands act: the project's database directly (:class:`LocalBackend`) or a running server over HTTP
(:class:`~stepstone.cli.http.HttpBackend`). Both answer with Cloudflare's REST documents (spec §14), so every
command prints the same thing either way."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from stepstone.binding import Account, Workflow
from stepstone.cron import parse_cron
from stepstone.details import instance_summary, iso, version_document, version_graph, workflow_summary
from stepstone.engine import Engine
from stepstone.errors import WorkflowNotFoundError
from stepstone.models import DEFAULT_ACCOUNT

Doc = dict[str, Any]


class Backend(Protocol):
    """The operations the CLI needs, as Cloudflare documents."""

    async def list_workflows(self) -> list[Doc]:
        """Every workflow, as list items."""
        ...

    async def get_workflow(self, name: str) -> Doc:
        """One workflow; raises WorkflowNotFoundError."""
        ...

    async def delete_workflow(self, name: str) -> None:
        """Delete a workflow and its instances."""
        ...

    async def list_versions(self, name: str) -> list[Doc]:
        """A workflow's versions, newest first (the first page of 100)."""
        ...

    async def version_graph(self, name: str, version_id: str) -> Doc:
        """A version with its diagram (``graph`` null when it has none)."""
        ...

    async def create_instance(self, name: str, instance_id: str | None, params: Any) -> Doc:
        """Queue a new instance: ``{id, status, version_id, workflow_id}``."""
        ...

    async def create_batch(self, name: str, batch: Doc) -> Doc:
        """Queue up to 100 instances: ``batch`` is ``{"count": n, "params": ...}`` or ``{"instances": [{"id",
        "params"}]}``; answers ``{"created": [{id, status, version_id, workflow_id}], "errors": [{index, id, code,
        message}]}``."""
        ...

    async def list_instances(
        self, name: str, *, status: str | None, page: int, per_page: int, reverse: bool
    ) -> tuple[list[Doc], int]:
        """A page of instances (newest first unless ``reverse``) and the total."""
        ...

    async def describe_instance(self, name: str, instance_id: str) -> Doc:
        """The instance details document."""
        ...

    async def change_status(
        self, name: str, instance_id: str, action: str, *, from_step: Doc | None = None, rollback: bool = False
    ) -> None:
        """``pause``, ``resume``, ``terminate`` (optionally rolling back first) or ``restart`` (optionally ``from``
        a step)."""
        ...

    async def send_event(self, name: str, instance_id: str, event_type: str, payload: Any) -> None:
        """Send an event to an instance."""
        ...

    async def delete_instances(self, name: str, ids: Sequence[str]) -> tuple[list[str], list[Doc]]:
        """Delete instances: the ids deleted and ``{id, message}`` for each failure."""
        ...

    def subscribe(self, name: str, instance_id: str) -> AsyncIterator[Doc]:
        """The instance's events (Cloudflare's ``subscribe``): recorded, then live, up to the terminal one."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


class LocalBackend:
    """The CLI on the project's database, through an engine that runs no worker.

    Args:
        engine: an engine built with ``worker=False``; started here, stopped by :meth:`close`.
        schedules: the project's cron expressions by workflow, shown in workflow documents.
    """

    def __init__(self, engine: Engine, *, schedules: Mapping[str, Sequence[str]] | None = None) -> None:
        self.engine = engine
        self.schedules = dict(schedules or {})

    def _with_schedules(self, doc: Doc) -> Doc:
        crons = self.schedules.get(str(doc.get("name")))
        if crons:
            now = datetime.now(UTC)
            doc["schedules"] = []
            for cron in crons:
                upcoming = parse_cron(cron).next_after(now)
                doc["schedules"].append(
                    {"cron": cron, "next_instance": iso(upcoming.timestamp()) if upcoming else None}
                )
        return doc

    async def start(self) -> LocalBackend:
        """Open the database (records the project's workflows)."""
        await self.engine.start()
        return self

    async def close(self) -> None:
        """Close the database."""
        await self.engine.stop()

    async def _workflow(self, name: str) -> Workflow:
        if name not in self.engine.definitions and await self._account.get_workflow(name) is None:
            raise WorkflowNotFoundError(f'workflow "{name}" not found')
        return self._account.workflow(name)

    @property
    def _account(self) -> Account:
        return self.engine.account(DEFAULT_ACCOUNT)  # the CLI's database mode acts as the Python API does

    async def list_workflows(self) -> list[Doc]:
        account = self._account
        return [
            self._with_schedules(workflow_summary(w, await account.count_by_status(w.name)))
            for w in await account.list_workflows()
        ]

    async def get_workflow(self, name: str) -> Doc:
        record = await self._account.get_workflow(name)
        if record is None:
            raise WorkflowNotFoundError(f'workflow "{name}" not found')
        return self._with_schedules(workflow_summary(record, await self._account.count_by_status(name)))

    async def delete_workflow(self, name: str) -> None:
        if not await self._account.delete_workflow(name):
            raise WorkflowNotFoundError(f'workflow "{name}" not found')

    async def list_versions(self, name: str) -> list[Doc]:
        await self.get_workflow(name)
        return [version_document(v) for v in (await self._account.list_versions(name))[:100]]

    async def version_graph(self, name: str, version_id: str) -> Doc:
        version = await self._account.get_version(name, version_id)
        if version is None:
            raise WorkflowNotFoundError(f"version {version_id!r} not found in workflow {name!r}")
        return version_graph(version)

    async def create_instance(self, name: str, instance_id: str | None, params: Any) -> Doc:
        wf = await self._workflow(name)
        inst = await wf.create(id=instance_id, params=params, trigger="api")
        record = await inst.record()
        return {"id": record.id, "status": record.status, "version_id": record.version_id, "workflow_id": name}

    async def create_batch(self, name: str, batch: Doc) -> Doc:
        wf = await self._workflow(name)
        result = await wf.create_batch(batch, trigger="api")
        created = []
        for inst in result.created:
            record = await inst.record()
            created.append(
                {"id": record.id, "status": record.status, "version_id": record.version_id, "workflow_id": name}
            )
        return {"created": created, "errors": result.errors}

    async def list_instances(
        self, name: str, *, status: str | None, page: int, per_page: int, reverse: bool
    ) -> tuple[list[Doc], int]:
        wf = await self._workflow(name)
        result = await wf.list_instances(
            status=status, limit=per_page, offset=(page - 1) * per_page, newest_first=not reverse
        )
        return [instance_summary(r) for r in result.items], result.total

    async def describe_instance(self, name: str, instance_id: str) -> Doc:
        wf = await self._workflow(name)
        return await (await wf.get(instance_id)).describe()

    async def change_status(
        self, name: str, instance_id: str, action: str, *, from_step: Doc | None = None, rollback: bool = False
    ) -> None:
        inst = await (await self._workflow(name)).get(instance_id)
        if action == "pause":
            await inst.pause()
        elif action == "resume":
            await inst.resume()
        elif action == "terminate":
            await inst.terminate(rollback=rollback)
        else:
            await inst.restart(from_step)

    async def send_event(self, name: str, instance_id: str, event_type: str, payload: Any) -> None:
        inst = await (await self._workflow(name)).get(instance_id)
        await inst.send_event(type=event_type, payload=payload)

    async def delete_instances(self, name: str, ids: Sequence[str]) -> tuple[list[str], list[Doc]]:
        wf = await self._workflow(name)
        found = set(await wf.delete_instances(list(dict.fromkeys(ids))))
        deleted = [i for i in ids if i in found]
        errors = [{"id": i, "message": f'instance "{i}" not found'} for i in ids if i not in found]
        return deleted, errors

    async def subscribe(self, name: str, instance_id: str) -> AsyncIterator[Doc]:
        inst = await (await self._workflow(name)).get(instance_id)
        async for event in inst.subscribe():
            yield event
