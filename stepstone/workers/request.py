"""``Request``: what a ``fetch`` handler receives, and what ``workers.fetch`` sends.

The names follow the Python Workers SDK (``url``, ``method`` as an ``HTTPMethod``, ``headers`` as an
``HTTPMessage``, ``await request.json()``, ``text()``, ``bytes()``, ``form_data()``, ``clone()``); ``js_object`` is
the request itself, so ``asgi.fetch(app, request.js_object, self.env)`` works as written for Cloudflare.
"""

from __future__ import annotations

import http.client
from collections.abc import AsyncIterable
from http import HTTPMethod
from typing import Any

from stepstone.workers.body import Body, BodyInit, HeadersInit, encode_body, make_headers


class Request(Body):
    """An HTTP request.

    Args:
        input: the URL, or a request to copy (its body is shared, as the Fetch API moves it).
        method: ``GET`` by default (a string or an ``HTTPMethod``).
        headers: a mapping, ``(name, value)`` pairs or an ``HTTPMessage``.
        body: text, bytes, a :class:`~stepstone.workers.FormData`, or an async iterable of byte chunks.
        redirect: ``follow`` (default), ``manual`` or ``error``: what ``workers.fetch`` does with a redirect.
        cf: Cloudflare's request properties (kept, never acted on).
    """

    def __init__(
        self,
        input: Request | str,
        *,
        method: str | HTTPMethod | None = None,
        headers: HeadersInit = None,
        body: BodyInit = None,
        redirect: str | None = None,
        cf: Any = None,
        **_other: Any,
    ) -> None:
        if isinstance(input, Request):
            self._url = input.url
            self._method = HTTPMethod(method.upper() if isinstance(method, str) else method or input.method)
            self._headers = make_headers(input.headers if headers is None else headers)
            source = input._tee() if body is None else encode_body(body, self._headers)
            self._redirect = redirect or input.redirect
            self._cf = input.cf if cf is None else cf
        else:
            if not isinstance(input, str):
                raise TypeError(f"Request: expected a URL or a Request, got {type(input).__name__}")
            self._url = input
            try:
                self._method = HTTPMethod((method or "GET").upper() if isinstance(method, str | None) else method)
            except ValueError:
                raise TypeError(f"Request: {method!r} is not a valid HTTP method") from None
            self._headers = make_headers(headers)
            source = encode_body(body, self._headers)
            self._redirect = redirect or "follow"
            self._cf = cf
        if source is not None and self._method in (HTTPMethod.GET, HTTPMethod.HEAD):
            raise TypeError("Request with a GET or HEAD method cannot have a body")
        self._init_body(source)

    @classmethod
    def _incoming(
        cls,
        url: str,
        method: str,
        headers: http.client.HTTPMessage,
        source: AsyncIterable[bytes] | bytes | None,
        cf: Any = None,
    ) -> Request:
        """A request as the runtime receives it (any method may carry a body there)."""
        request = cls.__new__(cls)
        request._url = url
        try:
            request._method = HTTPMethod(method.upper())
        except ValueError:
            request._method = method.upper()  # type: ignore[assignment]  # an extension method, kept as text
        request._headers = headers
        request._redirect = "manual"
        request._cf = cf
        request._init_body(source)
        return request

    def __repr__(self) -> str:
        return f"Request(method={str(self._method)!r}, url={self._url!r})"

    @property
    def url(self) -> str:
        """The full URL, with the query string."""
        return self._url

    @property
    def method(self) -> HTTPMethod:
        """The method (``HTTPMethod`` is a ``str``: ``request.method == "POST"`` works)."""
        return self._method

    @property
    def headers(self) -> http.client.HTTPMessage:
        """The headers: ``request.headers["content-type"]``, ``.get(name)``, ``.items()``, case-insensitive."""
        return self._headers

    @property
    def redirect(self) -> str:
        """The redirect mode."""
        return self._redirect

    @property
    def cf(self) -> Any:
        """Cloudflare's properties of the incoming request: None here (no edge in front)."""
        return self._cf

    @property
    def js_object(self) -> Request:
        """The request itself (on Cloudflare: the JavaScript ``Request`` it wraps)."""
        return self

    json = Body._read_json

    def clone(self) -> Request:
        """A copy with its own body (the body is read into memory if it is a stream)."""
        copy = Request._incoming(self._url, str(self._method), make_headers(self._headers), self._tee(), self._cf)
        copy._redirect = self._redirect
        return copy
