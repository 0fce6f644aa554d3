"""The few S3 calls the blob store makes, over ``httpx`` with AWS Signature Version 4 (no SDK needed).

Path-style URLs (``<endpoint>/<bucket>/<key>``), so any S3-compatible server works: AWS, Cloudflare R2, MinIO,
moto. Payloads are sent ``UNSIGNED-PAYLOAD`` (the signature covers the headers, not the body), which S3 accepts.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx

from stepstone.errors import StorageError, ValidationError

_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


@dataclass(frozen=True, slots=True)
class S3Location:
    """Where blobs go: ``s3://ACCESS_KEY:SECRET_KEY@bucket/prefix?endpoint=https://host&region=auto``."""

    endpoint: str
    bucket: str
    prefix: str
    region: str
    access_key: str
    secret_key: str

    @classmethod
    def from_url(cls, url: str) -> S3Location:
        """Parse an ``s3://`` URL (``endpoint`` is required: an S3-compatible server's base URL).

        Raises:
            ValidationError: not an ``s3://`` URL, or its bucket, credentials or endpoint are missing.
        """
        parts = urllib.parse.urlsplit(url)
        query = dict(urllib.parse.parse_qsl(parts.query))
        shown = url.replace(f":{parts.password}@", ":***@") if parts.password else url
        if parts.scheme != "s3" or not parts.hostname:
            raise ValidationError(f"blob store {shown!r} is invalid: expected s3://KEY:SECRET@bucket/prefix?endpoint=")
        if not parts.username or not parts.password:
            raise ValidationError(f"blob store {shown!r} is invalid: give the access key and secret (s3://KEY:SECRET@)")
        if not query.get("endpoint", "").startswith(("http://", "https://")):
            raise ValidationError(f"blob store {shown!r} is invalid: endpoint=http(s)://... is required")
        prefix = parts.path.strip("/")
        return cls(
            endpoint=query["endpoint"].rstrip("/"),
            bucket=parts.hostname,
            prefix=f"{prefix}/" if prefix else "",
            region=query.get("region", "us-east-1"),
            access_key=urllib.parse.unquote(parts.username),
            secret_key=urllib.parse.unquote(parts.password),
        )


async def _once(body: bytes) -> AsyncIterator[bytes]:
    view = memoryview(body)
    del body
    for i in range(0, len(view), 1 << 20):
        yield bytes(view[i : i + (1 << 20)])
    view.release()


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


class S3Client:
    """An ``httpx.AsyncClient`` that signs its requests for one bucket."""

    def __init__(self, location: S3Location) -> None:
        self.location = location
        self._http = httpx.AsyncClient(timeout=httpx.Timeout(60.0, connect=10.0))

    async def close(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    def _request(self, method: str, key: str, query: dict[str, str], body: bytes = b"") -> httpx.Request:
        loc = self.location
        path = "/" + urllib.parse.quote(f"{loc.bucket}/{key}" if key else loc.bucket, safe="/-_.~")
        url = f"{loc.endpoint}{path}"
        canonical_query = "&".join(
            f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
            for k, v in sorted(query.items())
        )
        now = datetime.datetime.now(datetime.UTC)
        amz_date, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = urllib.parse.urlsplit(loc.endpoint).netloc
        headers = {"host": host, "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "x-amz-date": amz_date}
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [
                method,
                path,
                canonical_query,
                *(f"{k}:{headers[k]}" for k in sorted(headers)),
                "",
                signed,
                "UNSIGNED-PAYLOAD",
            ]
        )
        scope = f"{day}/{loc.region}/s3/aws4_request"
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
        key_bytes = _hmac(_hmac(_hmac(_hmac(f"AWS4{loc.secret_key}".encode(), day), loc.region), "s3"), "aws4_request")
        signature = hmac.new(key_bytes, to_sign.encode(), hashlib.sha256).hexdigest()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={loc.access_key}/{scope}, SignedHeaders={signed}, Signature={signature}"
        )
        del headers["host"]
        headers["content-length"] = str(len(body))
        # The body as a generator that lets go of it once sent: httpx keeps the request (with a bytes body, the
        # whole part) in reference cycles that live until the next garbage collection, 8 MiB per part.
        return self._http.build_request(
            method, url + (f"?{canonical_query}" if canonical_query else ""), headers=headers, content=_once(body)
        )

    async def _send(
        self, method: str, key: str, query: dict[str, str] | None = None, body: bytes = b""
    ) -> httpx.Response:
        try:
            response = await self._http.send(self._request(method, key, query or {}, body))
        except httpx.HTTPError as exc:
            raise StorageError(f"S3 {method} {key!r} failed: {exc}") from exc
        if response.status_code >= 300:
            raise StorageError(f"S3 {method} {key!r} failed: HTTP {response.status_code} {response.text[:300]}")
        return response

    async def put(self, key: str, data: bytes) -> None:
        """PutObject."""
        await self._send("PUT", key, body=data)

    async def start_upload(self, key: str) -> str:
        """CreateMultipartUpload: its upload id."""
        response = await self._send("POST", key, {"uploads": ""})
        upload_id = ET.fromstring(response.content).findtext(f"{_NS}UploadId")
        if not upload_id:
            raise StorageError(f"S3 CreateMultipartUpload {key!r} returned no UploadId")
        return upload_id

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """UploadPart: the part's ETag."""
        response = await self._send("PUT", key, {"partNumber": str(number), "uploadId": upload_id}, data)
        return str(response.headers.get("etag", ""))

    async def finish_upload(self, key: str, upload_id: str, etags: list[str]) -> None:
        """CompleteMultipartUpload."""
        parts = "".join(f"<Part><PartNumber>{i}</PartNumber><ETag>{e}</ETag></Part>" for i, e in enumerate(etags, 1))
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        await self._send("POST", key, {"uploadId": upload_id}, body)

    async def abort_upload(self, key: str, upload_id: str) -> None:
        """AbortMultipartUpload."""
        await self._send("DELETE", key, {"uploadId": upload_id})

    async def delete(self, key: str) -> None:
        """DeleteObject (a missing object is no error)."""
        await self._send("DELETE", key)

    async def get(self, key: str, chunk_bytes: int) -> AsyncIterator[bytes]:
        """GetObject, streamed in chunks of at most ``chunk_bytes``."""
        request = self._request("GET", key, {})
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise StorageError(f"S3 GET {key!r} failed: {exc}") from exc
        try:
            if response.status_code >= 300:
                raise StorageError(f"S3 GET {key!r} failed: HTTP {response.status_code}")
            async for chunk in response.aiter_bytes(chunk_bytes):
                yield chunk
        finally:
            await response.aclose()

    async def keys(self, prefix: str) -> AsyncIterator[str]:
        """ListObjectsV2: every key under ``prefix``."""
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix}
            if token:
                query["continuation-token"] = token
            root = ET.fromstring((await self._send("GET", "", query)).content)
            for item in root.iter(f"{_NS}Contents"):
                key = item.findtext(f"{_NS}Key")
                if key:
                    yield key
            token = root.findtext(f"{_NS}NextContinuationToken")
            if root.findtext(f"{_NS}IsTruncated") != "true" or not token:
                return
