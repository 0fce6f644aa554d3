"""POST /users {"id", "email"} signs a user up (a D1 row) and starts their lifecycle; POST /users/<id>/subscribe
makes them a subscriber; PUT /flags stores the feature flags in KV; GET /users/<id> answers the lifecycle's
status; GET /outbox lists the emails "sent" (a D1 table). The same code runs on Cloudflare."""

from urllib.parse import urlparse

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint


async def send_email(db, email, subject):
    await db.prepare("INSERT INTO outbox (email, subject) VALUES (?, ?)").bind(email, subject).run()


class UserLifecycleWorkflow(WorkflowEntrypoint):
    async def run(self, event, step):
        user_id, email = event.payload["userId"], event.payload["email"]

        @step.do("send welcome email")
        async def welcome():
            await send_email(self.env.DB, email, "Welcome!")

        await welcome()
        await step.sleep("wait for trial period", self.env.TRIAL)

        @step.do("check conversion")
        async def converted():
            user = await self.env.DB.prepare("SELECT subscription_status FROM users WHERE id = ?").bind(user_id).first()
            return user["subscription_status"] == "active"

        @step.do("read feature flags")
        async def flags():
            return await self.env.KV.get("feature-flags", type="json") or {}

        has_converted, feature_flags = await converted(), await flags()

        @step.do("send follow-up")
        async def follow_up():
            if has_converted:
                subject = "Thanks for subscribing!"
            elif feature_flags.get("discounts"):
                subject = "Your trial has ended: 20% off today"
            else:
                subject = "Your trial has ended"
            await send_email(self.env.DB, email, subject)
            return subject

        return {"converted": has_converted, "follow_up": await follow_up()}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        parts = [p for p in urlparse(request.url).path.split("/") if p]
        if request.method == "POST" and parts == ["users"]:
            user = await request.json()
            await (
                self.env.DB.prepare("INSERT INTO users (id, email) VALUES (?, ?)").bind(user["id"], user["email"]).run()
            )
            instance = await self.env.USER_LIFECYCLE.create(
                id=user["id"], params={"userId": user["id"], "email": user["email"]}
            )
            return Response.json({"id": instance.id}, status=201)
        if request.method == "POST" and len(parts) == 3 and parts[0] == "users" and parts[2] == "subscribe":
            result = (
                await self.env.DB.prepare("UPDATE users SET subscription_status = 'active' WHERE id = ?")
                .bind(parts[1])
                .run()
            )
            return Response.json({"changes": result.meta.changes})
        if request.method == "PUT" and parts == ["flags"]:
            await self.env.KV.put("feature-flags", await request.text())
            return Response.json({"stored": True})
        if request.method == "GET" and len(parts) == 2 and parts[0] == "users":
            instance = await self.env.USER_LIFECYCLE.get(parts[1])
            return Response.json(await instance.status())
        if request.method == "GET" and parts == ["outbox"]:
            rows = await self.env.DB.prepare("SELECT email, subject FROM outbox ORDER BY id").all()
            return Response.json(rows.results)
        return Response("POST /users, POST /users/ID/subscribe, PUT /flags, GET /users/ID, GET /outbox", status=404)
