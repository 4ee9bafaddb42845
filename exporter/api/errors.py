"""RFC 9457 problem details: the exception, the response builder and the middleware."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
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
    **extra: Any,
) -> web.Response:
    """An `application/problem+json` response; `param` names the offending parameter."""
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status}
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
