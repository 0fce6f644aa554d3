"""POST /jobs enqueues each item of its JSON list; the queue handler creates one instance per message, named
after the message (``job-<id>``), so a redelivered message never starts a second instance."""

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint


class JobWorkflow(WorkflowEntrypoint):
    async def run(self, event, step):
        @step.do("process job")
        async def process():
            return {"job": event.payload["name"], "size": len(event.payload["name"])}

        return await process()


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        jobs = await request.json()
        for job in jobs:
            await self.env.JOBS.send(job)
        return Response.json({"queued": len(jobs)}, status=202)

    async def queue(self, batch):
        for message in batch.messages:
            await self.env.MY_WORKFLOW.create(id=f"job-{message.id}", params=message.body)
            message.ack()
