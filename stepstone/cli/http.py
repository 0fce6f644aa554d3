"""The CLI against a running server: Cloudflare's v4 Workflows REST API (spec §14) over httpx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from stepstone.cli.backend import Doc
from stepstone.errors import InstanceNotFoundError, StepstoneError, WorkflowNotFoundError


class ApiError(StepstoneError):
    """The server refused a request, or could not be reached."""


def _q(part: str) -> str:
    return quote(part, safe="")


class HttpBackend:
    """Cloudflare's REST API at ``url`` (``http://127.0.0.1:8787`` or ``.../client/v4``).

    Args:
        url: the server.
        token: sent as ``Authorization: Bearer``.
        account_id: the account in the paths.
        timeout: seconds per request.
    """

    def __init__(self, url: str, *, token: str | None, account_id: str, timeout: float = 30.0) -> None:
        base = url.rstrip("/")
        if not base.endswith("/client/v4"):
            base += "/client/v4"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base = f"{base}/accounts/{_q(account_id)}/workflows"
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout)

    async def close(self) -> None:
        await self._client.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> tuple[Any, Doc]:
        url = self.base + path
        try:
            response = await self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach {url}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            raise ApiError(f"{method} {url}: HTTP {response.status_code}, not a JSON response") from None
        if not isinstance(body, dict):
            raise ApiError(f"{method} {url}: HTTP {response.status_code}, unexpected response {body!r:.200}")
        if response.status_code >= 400 or not body.get("success", False):
            errors = body.get("errors") or []
            message = "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in errors)
            message = message or f"HTTP {response.status_code}"
            if response.status_code == 404:
                cls: type[StepstoneError] = InstanceNotFoundError if "/instances/" in path else WorkflowNotFoundError
                raise cls(message)
            raise ApiError(f"{method} {url}: {message}")
        return body.get("result"), body.get("result_info") or {}

    async def list_workflows(self) -> list[Doc]:
        out: list[Doc] = []
        page = 1
        while True:
            result, _ = await self._call("GET", "", params={"page": page, "per_page": 100})
            if not result:
                return out
            out.extend(result)
            if len(result) < 100:
                return out
            page += 1

    async def get_workflow(self, name: str) -> Doc:
        result, _ = await self._call("GET", f"/{_q(name)}")
        return dict(result)

    async def delete_workflow(self, name: str) -> None:
        await self._call("DELETE", f"/{_q(name)}")

    async def list_versions(self, name: str) -> list[Doc]:
        result, _ = await self._call("GET", f"/{_q(name)}/versions", params={"page": 1, "per_page": 100})
        return list(result or [])

    async def version_graph(self, name: str, version_id: str) -> Doc:
        result, _ = await self._call("GET", f"/{_q(name)}/versions/{_q(version_id)}/graph")
        return dict(result)

    async def create_instance(self, name: str, instance_id: str | None, params: Any) -> Doc:
        body: Doc = {"params": params}
        if instance_id is not None:
            body["instance_id"] = instance_id
        result, _ = await self._call("POST", f"/{_q(name)}/instances", json=body)
        return dict(result)

    async def create_batch(self, name: str, batch: Doc) -> Doc:
        body = dict(batch)
        if "instances" in body:  # the REST names of the binding's options
            body["instances"] = [
                {"instance_id" if k == "id" else k: v for k, v in item.items()} for item in body["instances"]
            ]
        result, _ = await self._call("POST", f"/{_q(name)}/instances/batch", json=body)
        return dict(result)

    async def list_instances(
        self, name: str, *, status: str | None, page: int, per_page: int, reverse: bool
    ) -> tuple[list[Doc], int]:
        params: dict[str, Any] = {"page": page, "per_page": per_page, "direction": "asc" if reverse else "desc"}
        if status:
            params["status"] = status
        result, info = await self._call("GET", f"/{_q(name)}/instances", params=params)
        items = list(result or [])
        return items, int(info.get("total_count", len(items)))

    async def describe_instance(self, name: str, instance_id: str) -> Doc:
        result, _ = await self._call("GET", f"/{_q(name)}/instances/{_q(instance_id)}")
        return dict(result)

    async def change_status(
        self, name: str, instance_id: str, action: str, *, from_step: Doc | None = None, rollback: bool = False
    ) -> None:
        body: Doc = {"status": action}
        if from_step is not None:
            body["from"] = from_step
        if rollback:
            body["rollback"] = True  # only when set, as wrangler sends it
        await self._call("PATCH", f"/{_q(name)}/instances/{_q(instance_id)}/status", json=body)

    async def send_event(self, name: str, instance_id: str, event_type: str, payload: Any) -> None:
        await self._call(
            "POST",
            f"/{_q(name)}/instances/{_q(instance_id)}/events/{_q(event_type)}",
            content=json.dumps(payload),
            headers={"Content-Type": "application/json"},
        )

    async def delete_instances(self, name: str, ids: Sequence[str]) -> tuple[list[str], list[Doc]]:
        result, _ = await self._call("POST", f"/{_q(name)}/instances/batch/delete", json={"instances": list(ids)})
        result = result or {}
        deleted = [str(d["id"]) for d in result.get("deleted", [])]
        return deleted, list(result.get("errors", []))

    async def subscribe(self, name: str, instance_id: str) -> AsyncIterator[Doc]:
        """The instance's events from ``GET .../subscribe`` (server-sent events); a dropped connection is
        resumed with the last event's id as the cursor, so no event is lost or repeated."""
        url = f"{self.base}/{_q(name)}/instances/{_q(instance_id)}/subscribe"
        cursor: int | None = None
        failures = 0
        while True:
            params = {"cursor": str(cursor)} if cursor is not None else {}
            try:
                async with self._client.stream("GET", url, params=params, timeout=httpx.Timeout(60.0)) as answer:
                    if answer.status_code != 200:
                        await answer.aread()
                        try:
                            errors = answer.json().get("errors") or []
                        except ValueError:
                            errors = []
                        message = "; ".join(str(e.get("message", e)) for e in errors) or f"HTTP {answer.status_code}"
                        if answer.status_code == 404:
                            raise InstanceNotFoundError(message)
                        raise ApiError(f"GET {url}: {message}")
                    data: list[str] = []
                    async for line in answer.aiter_lines():
                        if line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif line == "" and data:
                            event = json.loads("\n".join(data))
                            data = []
                            cursor = int(event["eventId"])
                            failures = 0
                            yield event
                    return  # the server closed the stream after the terminal event
            except httpx.HTTPError as exc:
                failures += 1
                if failures > 5:
                    raise ApiError(f"lost the event stream at {url}: {exc}") from None
                await asyncio.sleep(0.2 * failures)
