"""``Response``: what a ``fetch`` handler returns, and what ``workers.fetch`` gives back.

As in the Python Workers SDK: ``Response(body, status=, status_text=, headers=)``, the static ``Response.json(data,
status=, headers=)`` (``from_json``), ``Response.redirect(url, status)``, and on an instance ``status``, ``ok``,
``headers``, ``await response.json()``, ``text()``, ``bytes()``, ``clone()``.
"""

from __future__ import annotations

import http.client
from collections.abc import AsyncIterable
from http import HTTPStatus
from typing import Any

from stepstone.workers.body import Body, BodyInit, HeadersInit, dumps, encode_body, make_headers


class _Json:
    """``Response.json(data)`` builds a JSON response; ``await response.json()`` reads one (both exist on
    Cloudflare under the one name)."""

    def __get__(self, instance: Response | None, owner: type[Response]) -> Any:
        if instance is None:
            return owner.from_json
        return instance._read_json


class Response(Body):
    """An HTTP response.

    Args:
        body: text (sent as ``text/plain;charset=UTF-8`` unless ``headers`` say otherwise), bytes, a
            :class:`~stepstone.workers.FormData`, a :class:`~stepstone.workers.Blob`, or an async iterable of
            byte chunks (streamed to the client).
        status: 200 by default.
        status_text: the reason phrase (default: the standard one).
        headers: a mapping, ``(name, value)`` pairs or an ``HTTPMessage``.
    """

    json = _Json()

    def __init__(
        self,
        body: BodyInit = None,
        status: HTTPStatus | int | None = None,
        status_text: str = "",
        headers: HeadersInit = None,
        web_socket: Any = None,
    ) -> None:
        if web_socket is not None:
            raise NotImplementedError("WebSocket responses are not supported by stepstone's Worker runtime")
        code = int(status) if status is not None else 200
        if isinstance(status, bool) or not 200 <= code <= 599:
            raise ValueError(f"Response: status must be an integer from 200 to 599, got {status!r}")
        self._status = code
        self._status_text = status_text
        self._headers = make_headers(headers)
        self._init_body(encode_body(body, self._headers))
        self._url = ""
        self._redirected = False

    @classmethod
    def _received(
        cls, status: int, headers: http.client.HTTPMessage, body: bytes, url: str, redirected: bool, reason: str = ""
    ) -> Response:
        """A response as ``workers.fetch`` received it (any status, 1xx-599)."""
        response = cls.__new__(cls)
        response._status = status
        response._status_text = reason
        response._headers = headers
        response._init_body(body)
        response._url = url
        response._redirected = redirected
        return response

    def __repr__(self) -> str:
        parts = [f"status={self._status}"]
        if "content-type" in self._headers:
            parts.append(f"content_type={self._headers['content-type']!r}")
        if self._url:
            parts.append(f"url={self._url!r}")
        return f"Response({', '.join(parts)})"

    # -- building ---------------------------------------------------------------------------------------------
    @staticmethod
    def from_json(
        data: Any, status: HTTPStatus | int = HTTPStatus.OK, status_text: str = "", headers: HeadersInit = None
    ) -> Response:
        """A response whose body is ``data`` as JSON, with ``content-type: application/json`` unless given.

        Dataclasses (such as what an instance's ``status()`` returns) are encoded as objects of their fields.
        """
        text = dumps(data)
        merged = make_headers(headers)
        if "content-type" not in merged:
            merged["content-type"] = "application/json"
        return Response(text, status=status, status_text=status_text, headers=merged)

    @staticmethod
    def redirect(url: str, status: HTTPStatus | int = HTTPStatus.FOUND) -> Response:
        """A redirect to ``url`` (301, 302, 303, 307 or 308)."""
        code = int(status)
        if code not in (301, 302, 303, 307, 308):
            raise ValueError(f"Response.redirect: invalid status code {code}: expected 301, 302, 303, 307 or 308")
        return Response(None, status=code, headers={"location": url})

    # -- reading ----------------------------------------------------------------------------------------------
    @property
    def status(self) -> int:
        """The status code."""
        return self._status

    @property
    def status_text(self) -> str:
        """The reason phrase."""
        if self._status_text:
            return self._status_text
        try:
            return HTTPStatus(self._status).phrase
        except ValueError:
            return ""

    @property
    def ok(self) -> bool:
        """Whether the status is 200-299."""
        return 200 <= self._status <= 299

    @property
    def headers(self) -> http.client.HTTPMessage:
        """The headers (case-insensitive ``HTTPMessage``); changing them changes what is sent."""
        return self._headers

    @property
    def url(self) -> str:
        """The URL a fetched response came from ('' for one made here)."""
        return self._url

    @property
    def redirected(self) -> bool:
        """Whether ``workers.fetch`` followed a redirect to get it."""
        return self._redirected

    @property
    def type(self) -> str:
        """``default`` (``basic`` on Cloudflare for fetched ones; nothing depends on it here)."""
        return "default"

    @property
    def js_object(self) -> Response:
        """The response itself (on Cloudflare: the JavaScript ``Response`` it wraps)."""
        return self

    def raise_for_status(self) -> None:
        """Raise ``OSError`` for a 4xx or 5xx status (as Pyodide's ``FetchResponse``)."""
        if 400 <= self._status <= 599:
            kind = "Client Error" if self._status < 500 else "Server Error"
            raise OSError(f"{self._status} {kind}: {self.status_text} for url: {self._url}")

    def clone(self) -> Response:
        """A copy with its own body."""
        copy = Response._received(
            self._status, make_headers(self._headers), b"", self._url, self._redirected, self._status_text
        )
        copy._init_body(self._tee())
        return copy

    def replace_body(self, body: BodyInit) -> Response:
        """A response with this one's status and headers and another body."""
        return Response(body, status=self._status, status_text=self._status_text, headers=self._headers)

    def _with_stream(self, source: AsyncIterable[bytes]) -> Response:
        """This response, its body read from ``source`` (the ASGI bridge streams an app's body so)."""
        self._init_body(source)
        return self

    @property
    def _stream(self) -> bytes | AsyncIterable[bytes] | None:
        """The body source, for the runtime that sends it."""
        return self._source


FetchResponse = Response
"""What ``workers.fetch`` returns (the SDK's name for a fetched response)."""
