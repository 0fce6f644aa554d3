"""The v4 envelope every response wears, and how errors become envelopes.

Success: ``{"success": true, "errors": [], "messages": [], "result": ..., "result_info"?: {...}}``.
Failure: ``{"success": false, "errors": [{"code", "message"}], "messages": [], "result": null}`` with
``x-should-retry: false`` when retrying cannot help (the official SDK otherwise retries 409s and 5xx). Params that
do not match the workflow's declared type add one error per field after the first, each with Cloudflare's
``source: {"pointer": "/params/email"}`` (the ``ResponseInfo.source`` of its API schema).

Error codes (Cloudflare's where known, spec §14):

===== ====== ============================================================================
code  status meaning
===== ====== ============================================================================
10000 401/403 authentication: no token, an unknown token, or a token for another account
10001 500/503 internal error / the database is unavailable (retry)
10002 400    the request is malformed: body, query, path parameter, or a value over a limit
10003 413    the request body is over the size cap
10004 408    the request body did not arrive in time, or the client went away before sending it
10200 404    workflow not found
10400 404    instance not found
10401 409    an instance with this id already exists (use restart)
10402 409    the instance's status refuses the operation (terminate a finished instance)
7003  404    no such route
10405 405    method not allowed on this route
971   429    a creation rate was reached (Cloudflare's API rate-limit code); ``Retry-After`` says when to retry
10411 429    the workflow's queued-instance limit was reached (stepstone's code); ``Retry-After`` as well
===== ====== ============================================================================
"""

from __future__ import annotations

import logging
import math
from typing import Any, Final

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from stepstone.errors import (
    InstanceExistsError,
    InstanceNotFoundError,
    InvalidStateError,
    NotFoundError,
    RateLimitedError,
    StorageError,
    ValidationError,
    WorkflowNotFoundError,
)

AUTH: Final = 10000
INTERNAL: Final = 10001
INVALID: Final = 10002
TOO_LARGE: Final = 10003
BODY_TIMEOUT: Final = 10004
WORKFLOW_NOT_FOUND: Final = 10200
INSTANCE_NOT_FOUND: Final = 10400
INSTANCE_EXISTS: Final = 10401
INVALID_STATE: Final = 10402
NO_ROUTE: Final = 7003
BAD_METHOD: Final = 10405

_RETRYABLE: Final = frozenset({408, 429})


class ApiError(Exception):
    """An error answered in the v4 envelope.

    Args:
        status: the HTTP status.
        code: the v4 error code (see the module table).
        message: what was wrong and what to do about it, for a person.
    """

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        fields: tuple[dict[str, str], ...] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        """Seconds, for a 429: sent as ``Retry-After`` (whole seconds, at least 1)."""
        self.fields = fields
        """For a value checked against its declared type: ``{"field", "message"}`` per field that did not match."""


def pointer(field: str) -> str:
    """The JSON pointer (RFC 6901) of a field path: ``params.items[0].sku`` is ``/params/items/0/sku``."""
    parts = field.replace("[", ".").replace("]", "").split(".")
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts if p)


def bad_request(message: str) -> ApiError:
    """A 400 for a malformed request."""
    return ApiError(400, INVALID, message)


def ok(result: Any, *, result_info: dict[str, Any] | None = None, status: int = 200) -> JSONResponse:
    """A success envelope."""
    body: dict[str, Any] = {"success": True, "errors": [], "messages": [], "result": result}
    if result_info is not None:
        body["result_info"] = result_info
    return JSONResponse(body, status_code=status)


def error_response(error: ApiError) -> JSONResponse:
    """A failure envelope; 4xx other than 408/429 carry ``x-should-retry: false``."""
    errors: list[dict[str, Any]] = [{"code": error.code, "message": error.message}]
    errors.extend(
        {"code": error.code, "message": f"{f['field']}: {f['message']}", "source": {"pointer": pointer(f["field"])}}
        for f in error.fields
    )
    body = {
        "success": False,
        "errors": errors,
        "messages": [],
        "result": None,
    }
    headers = {"x-should-retry": "false"} if 400 <= error.status < 500 and error.status not in _RETRYABLE else {}
    if error.status == 401:
        headers["www-authenticate"] = 'Bearer realm="stepstone"'
    if error.retry_after is not None:
        headers["retry-after"] = str(max(1, math.ceil(error.retry_after)))
    return JSONResponse(body, status_code=error.status, headers=headers)


def api_error_for(exc: BaseException) -> ApiError:
    """The envelope error for an exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ClientDisconnect):
        return ApiError(400, BODY_TIMEOUT, "the client disconnected before sending the whole request body")
    message = str(exc) or type(exc).__name__
    if isinstance(exc, InstanceExistsError):
        return ApiError(409, INSTANCE_EXISTS, message)
    if isinstance(exc, WorkflowNotFoundError):
        return ApiError(404, WORKFLOW_NOT_FOUND, message)
    if isinstance(exc, InstanceNotFoundError | NotFoundError):
        return ApiError(404, INSTANCE_NOT_FOUND, message)
    if isinstance(exc, InvalidStateError):
        return ApiError(409, INVALID_STATE, message)
    if isinstance(exc, RateLimitedError):
        return ApiError(429, exc.code, message, retry_after=exc.retry_after)
    if isinstance(exc, ValidationError):
        return ApiError(400, INVALID, message, fields=exc.errors)
    if isinstance(exc, RecursionError):
        return ApiError(400, INVALID, "the value is nested too deeply to store")
    if isinstance(exc, StorageError):
        return ApiError(503, INTERNAL, f"the database is unavailable: {message}")
    return ApiError(500, INTERNAL, f"internal error ({type(exc).__name__}); see the server log")


def log_failure(logger: logging.Logger, request: Request, exc: BaseException, error: ApiError) -> None:
    """Log a failed request once, the way an operator wants to read it.

    A refusal (401/403) is a WARNING, a body cut off (too slow, or the client went away mid-body) an INFO, both
    one line without a traceback: they are the client's doing. A 5xx is an ERROR with its traceback. Other 4xx
    are answered to the client and not logged.
    """
    where = f"{request.method} {request.url.path[:200]}"
    peer = request.client.host if request.client else "?"
    if error.status in (401, 403):
        logger.warning("%s from %s refused (%d): %s", where, peer, error.status, error.message)
    elif error.code == BODY_TIMEOUT:
        logger.info("%s from %s: %s", where, peer, error.message)
    elif error.status >= 500:
        logger.error("%s failed", where, exc_info=exc)
