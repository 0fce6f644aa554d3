"""Image pipeline: fetch an image's bytes, describe it, wait for a human to approve, publish it.
The seed's ``ImageProcessingWorkflow``: a directory stands in for R2 and a PNG header reader for the AI model.
Step results may be ``bytes``; they are stored and replayed exactly (not as base64 strings or lists)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

from stepstone import NonRetryableError, WorkflowEntrypoint, WorkflowEvent, WorkflowStep, WorkflowTimeoutError

HERE = Path(__file__).resolve().parent


def describe_png(data: bytes) -> dict[str, Any]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise NonRetryableError("not a PNG image")
    width, height = struct.unpack(">II", data[16:24])
    return {
        "format": "png",
        "width": width,
        "height": height,
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "description": f"a {width}x{height} PNG image",
    }


class ImageProcessingWorkflow(WorkflowEntrypoint):
    """Params: ``{"imageKey": "gradient.png", "timeout": "24 hours"}``; approve with an ``approved`` event."""

    async def run(self, event: WorkflowEvent, step: WorkflowStep) -> Any:
        bucket = HERE / self.env.BUCKET
        key = event.payload["imageKey"]

        def fetch() -> bytes:
            path = bucket / key
            if not path.is_file():
                raise NonRetryableError(f"no object {key!r} in the bucket")
            return path.read_bytes()

        image_data: bytes = await step.do("fetch image", fetch)
        description = await step.do("generate description", lambda: describe_png(image_data))

        try:
            await step.wait_for_event("await approval", "approved", timeout=event.payload.get("timeout", "24 hours"))
        except WorkflowTimeoutError:
            return {"published": False, **description}

        def publish() -> str:
            target = bucket / "public" / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image_data)  # the bytes fetched in the first step, replayed from history
            return str(target.relative_to(HERE))

        location = await step.do("publish", publish)
        return {"published": True, "location": location, **description}
