"""POST / starts a payment (its JSON body is the instance's params) and answers the instance id; the instance
waits for the payment provider's webhook, which POST /webhook?instanceId=... delivers as an event; GET
/?instanceId=... answers its status. The same code runs on Cloudflare."""

import uuid
from urllib.parse import parse_qs, urlparse

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint
from workers.workflows import NonRetryableError


class PaymentWorkflow(WorkflowEntrypoint):
    async def run(self, event, step):
        payload = event.payload

        @step.do("validate order")
        async def validate():
            if payload.get("amount", 0) <= 0:
                raise NonRetryableError("the amount must be positive")
            return {"user": payload["userId"], "amount": payload["amount"], "currency": self.env.CURRENCY}

        order = await validate()
        webhook = await step.wait_for_event("wait for stripe webhook", "stripe-webhook", timeout="24 hours")

        @step.do("record payment")
        async def record():
            return {**order, "paid": webhook.payload.get("paid", False), "charge": webhook.payload.get("charge")}

        return await record()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        instance_id = parse_qs(url.query).get("instanceId", [None])[0]
        if request.method == "POST" and url.path == "/":
            instance = await self.env.MY_WORKFLOW.create(id=str(uuid.uuid4()), params=await request.json())
            return Response.json({"id": instance.id}, status=201)
        if request.method == "POST" and url.path == "/webhook" and instance_id:
            instance = await self.env.MY_WORKFLOW.get(instance_id)
            await instance.send_event(type="stripe-webhook", payload=await request.json())
            return Response.json({"status": await instance.status()})
        if request.method == "GET" and url.path == "/" and instance_id:
            instance = await self.env.MY_WORKFLOW.get(instance_id)
            return Response.json(await instance.status())
        return Response("POST / with a JSON body to start a payment; GET /?instanceId=ID for its status", status=404)
