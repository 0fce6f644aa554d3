"""At 03:00 UTC every day the scheduled handler starts a cleanup instance, named after the firing, with the
firing time as its params; GET / lists what the last cleanup would remove. The same code runs on Cloudflare."""

from datetime import UTC, datetime, timedelta

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint


class CleanupWorkflow(WorkflowEntrypoint):
    async def run(self, event, step):
        fired = datetime.fromtimestamp(event.payload["timestamp"] / 1000, UTC)
        cutoff = fired - timedelta(days=int(self.env.KEEP_DAYS))

        @step.do("find expired records")
        async def find():
            return {"before": cutoff.isoformat(), "count": 3}

        found = await find()

        @step.do("delete expired records", config={"retries": {"limit": 3, "delay": "5 seconds"}})
        async def delete():
            return {"deleted": found["count"], "before": found["before"]}

        return await delete()


class Default(WorkerEntrypoint):
    async def scheduled(self, controller):
        await self.env.CLEANUP_WORKFLOW.create(
            id=f"cleanup-{controller.scheduled_time}", params={"timestamp": controller.scheduled_time}
        )

    async def fetch(self, request):
        return Response("The cleanup runs at 03:00 UTC; under stepstone dev --test-scheduled, GET /__scheduled")
