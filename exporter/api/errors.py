"""RFC 9457 problem details: the exception, the response builder and the middleware."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

log = logging.getLogger(__name__)
access_log = logging.getLogger("exporter.api.access")

PROBLEM_TYPE = "application/problem+json"
REQUEST_ID_HEADER = "X-Request-Id"
REQUEST_ID = web.RequestKey("request_id", str)
"""Key of the request id in the request's mapping."""

MAX_QUERY_BYTES = 2048
"""Longest accepted query string; longer ones answer 414."""
MAX_HEADER_BYTES = 32 * 1024
"""Most header bytes in all of a request (aiohttp limits each field alone); more is 431."""

PROBLEM_BASE = "/api/v1/problems/"
"""Problem `type` URIs are this plus the kind (relative: the API serves their description)."""


@dataclass(frozen=True, slots=True)
class Kind:
    """A kind of error: its status, title and when it happens."""

    status: int
    title: str
    when: str


KINDS: dict[str, Kind] = {
    "invalid-parameter": Kind(
        400,
        "Invalid parameter",
        "a query parameter, path segment or body field is malformed, unknown or out of range; "
        "`param` names it",
    ),
    "malformed-request": Kind(400, "Bad Request", "the HTTP request itself is malformed"),
    "unauthorized": Kind(
        401, "Unauthorized", "no bearer token, or an unknown, expired or revoked one"
    ),
    "forbidden": Kind(403, "Forbidden", "the token lacks the scope (or tenant) the call needs"),
    "not-found": Kind(
        404, "Not Found", "no such route, or no such workflow or export job for this tenant"
    ),
    "method-not-allowed": Kind(
        405, "Method Not Allowed", "the route exists; `Allow` lists its methods"
    ),
    "not-acceptable": Kind(
        406, "Not Acceptable", "no format of the resource matches the `Accept` header"
    ),
    "request-timeout": Kind(408, "Request Timeout", "the request body did not arrive in time"),
    "conflict": Kind(
        409,
        "Conflict",
        "the resource is busy (`Retry-After` says when to retry) or the export job failed",
    ),
    "gone": Kind(410, "Gone", "the export file expired; create the export again"),
    "payload-too-large": Kind(
        413, "Payload Too Large", "the request body is over `api.max_body_bytes`"
    ),
    "uri-too-long": Kind(414, "URI Too Long", "the request line or query string is over the limit"),
    "rate-limited": Kind(
        429, "Too Many Requests", "too many requests or streams for this token; see `Retry-After`"
    ),
    "headers-too-large": Kind(
        431,
        "Request Header Fields Too Large",
        "a header line or the header block is over the limit",
    ),
    "internal-error": Kind(
        500, "Internal Server Error", "a bug; the log line with the same `request_id` says more"
    ),
    "unavailable": Kind(
        503,
        "Service Unavailable",
        "the store is unreachable, its schema is missing, a query timed out, or the API is "
        "shutting down; retry after `Retry-After` seconds",
    ),
}
"""Every kind of error the API answers, by the last segment of its `type` URI."""
_KIND_OF_STATUS = {k.status: name for name, k in reversed(KINDS.items())}
"""The default kind of each status: the first listed with it."""


def problem_type(status: int, kind: str | None = None) -> str:
    """The `type` URI of a problem: its kind's, else the status's, else `about:blank`."""
    name = kind or _KIND_OF_STATUS.get(status)
    return PROBLEM_BASE + name if name in KINDS else "about:blank"


_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ProblemError(Exception):
    """Raise anywhere in a handler to answer with a problem+json document."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str | None = None,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.param = param
        self.headers = headers or {}
        self.extra = extra


def problem(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    param: str | None = None,
    headers: dict[str, str] | None = None,
    request: web.Request | None = None,
    kind: str | None = None,
    **extra: Any,
) -> web.Response:
    """An `application/problem+json` response; `param` names the offending parameter, `kind`
    the kind of error when the status alone does not (see `KINDS`)."""
    body: dict[str, Any] = {"type": problem_type(status, kind), "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if param is not None:
        body["param"] = param
    if request is not None:
        body["instance"] = request.path
        if REQUEST_ID in request:
            body["request_id"] = request[REQUEST_ID]
    body.update(extra)
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type=PROBLEM_TYPE,
        headers=headers,
    )


def _from_http(request: web.Request, exc: web.HTTPException) -> web.Response:
    """A problem response for an aiohttp HTTP exception (404, 405, 413, ...)."""
    status = exc.status
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = exc.reason
    headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After", "Location")}
    detail = None
    if status == 404:
        detail = "no such resource"
    elif status == 405:
        detail = f"method {request.method} is not allowed here"
    elif status == 413:
        detail = "request body is too large"
    return problem(status, title, detail, headers=headers or None, request=request)


def request_id(request: web.Request) -> str:
    """The id of this request: a sane incoming X-Request-Id, else a new one."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    return incoming if _REQUEST_ID_RE.fullmatch(incoming) else uuid.uuid4().hex


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request ids, query size limit, and every error turned into problem+json."""
    rid = request_id(request)
    request[REQUEST_ID] = rid
    try:
        if len(request.query_string) > MAX_QUERY_BYTES:
            raise ProblemError(
                414, "URI Too Long", f"the query string is longer than {MAX_QUERY_BYTES} bytes"
            )
        if sum(len(k) + len(v) for k, v in request.raw_headers) > MAX_HEADER_BYTES:
            raise ProblemError(
                431,
                "Request Header Fields Too Large",
                f"the headers are longer than {MAX_HEADER_BYTES} bytes in all",
            )
        response = await handler(request)
    except ProblemError as exc:
        response = problem(
            exc.status,
            exc.title,
            exc.detail,
            param=exc.param,
            headers=exc.headers or None,
            request=request,
            **exc.extra,
        )
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _from_http(request, exc)
    except Exception:
        log.exception("request %s %s failed (request id %s)", request.method, request.path, rid)
        response = problem(
            500, "Internal Server Error", "the request could not be completed", request=request
        )
    if not response.prepared:
        response.headers[REQUEST_ID_HEADER] = rid
    return response


class AccessLogger(AbstractAccessLogger):
    """One line per request with its id, status, size and time."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time_s: float) -> None:
        """Write the access log line."""
        rid = request.get(REQUEST_ID, "-")
        self.logger.info(
            '%s "%s %s" %s %s %.1fms rid=%s',
            request.remote or "-",
            request.method,
            request.path,
            response.status,
            response.body_length,
            time_s * 1000,
            rid,
        )

    @property
    def enabled(self) -> bool:
        """Whether access lines would be written."""
        return self.logger.isEnabledFor(logging.INFO)
