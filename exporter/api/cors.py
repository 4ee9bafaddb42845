"""CORS for browsers (off unless `api.cors_origins` lists origins) and OPTIONS on every route."""

from __future__ import annotations

from aiohttp import hdrs, web

from exporter.api.errors import REQUEST_ID_HEADER, Handler

ALLOW_HEADERS = "Authorization, Content-Type, Accept, X-Request-Id"
EXPOSE_HEADERS = ", ".join(
    (REQUEST_ID_HEADER, "X-Data-As-Of", "Retry-After", "Link", "Content-Disposition", "Location")
)
MAX_AGE_S = 600
"""How long a browser may keep a preflight answer."""


class Cors:
    """The allowed origins, and the headers they get."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(origins)

    def allows(self, origin: str | None) -> bool:
        """Whether a request from `origin` gets CORS headers."""
        return origin is not None and (self.any or origin in self.origins)

    def decorate(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """Add the CORS headers of an allowed origin (before the headers are sent)."""
        if not self.origins:
            return
        response.headers.add(hdrs.VARY, hdrs.ORIGIN)
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is not None and self.allows(origin):
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
            response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSE_HEADERS


CORS = web.AppKey("wfa_cors", Cors)


@web.middleware
async def options_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """OPTIONS on an existing route: 204 with `Allow` (and, for an allowed origin, the
    preflight headers); other requests pass through."""
    if request.method != hdrs.METH_OPTIONS:
        return await handler(request)
    exc = request.match_info.http_exception
    if not isinstance(exc, web.HTTPMethodNotAllowed):
        return await handler(request)
    allowed = sorted({*exc.allowed_methods, hdrs.METH_OPTIONS})
    response = web.Response(status=204, headers={hdrs.ALLOW: ", ".join(allowed)})
    if request.app[CORS].allows(request.headers.get(hdrs.ORIGIN)):
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = ", ".join(allowed)
        response.headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ALLOW_HEADERS
        response.headers[hdrs.ACCESS_CONTROL_MAX_AGE] = str(MAX_AGE_S)
    return response


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    request.app[CORS].decorate(request, response)


def setup(app: web.Application, origins: tuple[str, ...]) -> None:
    """Answer OPTIONS and add CORS headers to every response (streams and errors included)."""
    app[CORS] = Cors(origins)
    app.on_response_prepare.append(_on_prepare)
