"""PUT /images/<key> stores an image in R2; POST /process {"imageKey": key} starts the pipeline and answers the
instance id; POST /approve?instanceId=ID approves it; GET /status?instanceId=ID answers its status; GET
/public/<key> serves a published image. The same code runs on Cloudflare."""

from urllib.parse import parse_qs, unquote, urlparse

from workers import Response, WorkerEntrypoint, WorkflowEntrypoint
from workers.workflows import NonRetryableError


class ImageProcessingWorkflow(WorkflowEntrypoint):
    async def run(self, event, step):
        key = event.payload["imageKey"]

        @step.do("fetch image")
        async def fetch_image():
            obj = await self.env.BUCKET.get(key)
            if obj is None:
                raise NonRetryableError(f"no image {key} in the bucket")
            return {"data": await obj.arrayBuffer(), "type": obj.httpMetadata.get("contentType")}

        image = await fetch_image()

        @step.do("generate description")
        async def describe():
            return await self.env.AI.run(
                "@cf/llava-hf/llava-1.5-7b-hf",
                {"image": list(image["data"]), "prompt": "Describe this image", "max_tokens": 50},
            )

        description = await describe()
        await step.wait_for_event("await approval", "approved", timeout=event.payload.get("timeout", "24 hours"))

        @step.do("publish")
        async def publish():
            published = await self.env.BUCKET.put(
                f"public/{key}",
                image["data"],
                httpMetadata={"contentType": image["type"] or "application/octet-stream"},
                customMetadata={"description": description["description"]},
            )
            return published.etag

        return {"published": f"public/{key}", "etag": await publish(), **description}


class Default(WorkerEntrypoint):
    async def fetch(self, request):
        url = urlparse(request.url)
        path = unquote(url.path)
        query = parse_qs(url.query)
        if request.method == "PUT" and path.startswith("/images/"):
            stored = await self.env.BUCKET.put(
                path[len("/images/") :],
                await request.bytes(),
                httpMetadata={"contentType": request.headers.get("content-type", "application/octet-stream")},
            )
            return Response.json({"key": stored.key, "size": stored.size, "etag": stored.etag}, status=201)
        if request.method == "POST" and path == "/process":
            instance = await self.env.IMAGE_PIPELINE.create(params=await request.json())
            return Response.json({"id": instance.id}, status=201)
        if request.method == "POST" and path == "/approve":
            instance = await self.env.IMAGE_PIPELINE.get(query["instanceId"][0])
            await instance.send_event(type="approved", payload={"by": "reviewer"})
            return Response.json({"status": await instance.status()})
        if request.method == "GET" and path == "/status":
            instance = await self.env.IMAGE_PIPELINE.get(query["instanceId"][0])
            return Response.json(await instance.status())
        if request.method == "GET" and path.startswith("/public/"):
            obj = await self.env.BUCKET.get(path[1:])
            if obj is None:
                return Response("not published", status=404)
            headers = {"etag": obj.httpEtag}
            obj.writeHttpMetadata(headers)
            return Response(await obj.arrayBuffer(), headers=headers)
        return Response("PUT /images/KEY, POST /process, POST /approve?instanceId=, GET /public/KEY", status=404)
