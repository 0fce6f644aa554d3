"""Child workflows with an awaitable result: an order fans out one ``shipment`` child per warehouse and waits
for all of them, hibernating (no coroutine, no worker held) until each child finishes; a failed shipment
reaches the order as a ``NonRetryableError`` it can handle."""

from __future__ import annotations

import asyncio
from typing import Any

from stepstone import NonRetryableError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep


class ShipmentWorkflow(WorkflowEntrypoint):
    """Params: ``{"order": "o-1", "warehouse": "berlin", "items": ["mug"]}``; returns a tracking number."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        warehouse = event.payload["warehouse"]
        items = event.payload["items"]

        def pack() -> int:
            if warehouse == "atlantis":
                raise NonRetryableError(f"no warehouse called {warehouse}", "UnknownWarehouse")
            return len(items)

        parcels = await step.do("pack", pack)
        tracking = await step.do("label", lambda: f"{warehouse[:3].upper()}-{event.payload['order']}-{parcels}")
        return {"warehouse": warehouse, "tracking": tracking}


class OrderWorkflow(WorkflowEntrypoint):
    """Params: ``{"lines": [{"warehouse": "berlin", "item": "mug"}, ...]}``."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        order = event.instance_id
        by_warehouse: dict[str, list[str]] = {}
        for line in event.payload["lines"]:
            by_warehouse.setdefault(line["warehouse"], []).append(line["item"])

        async def ship(warehouse: str, items: list[str]) -> dict[str, Any]:
            params = {"order": order, "warehouse": warehouse, "items": items}
            try:
                # the child's id is the same on every replay: <order>-shipment-<n>
                return dict(await step.run_workflow("shipment", params))
            except NonRetryableError as exc:
                return {"warehouse": warehouse, "failed": f"{exc.name}: {exc}"}

        shipments = await asyncio.gather(*(ship(w, items) for w, items in sorted(by_warehouse.items())))
        failed = [s for s in shipments if "failed" in s]
        summary = await step.do(
            "notify customer", lambda: f"{len(shipments) - len(failed)} of {len(shipments)} shipments on their way"
        )
        return {"summary": summary, "shipments": shipments}
