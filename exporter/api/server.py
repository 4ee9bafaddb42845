"""The API's HTTP listener: an aiohttp runner on a bound socket, stopped within a grace."""

from __future__ import annotations

import logging
import socket

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler

from exporter.api.app import MAX_HEADER_FIELD, MAX_REQUEST_LINE
from exporter.api.errors import AccessLogger, problem
from exporter.runtime import url_host

log = logging.getLogger(__name__)


def parser_problem(exc: BadHttpMessage) -> web.Response:
    """The problem+json answer to a request aiohttp's parser refused: 414 for a request line
    over the limit, 431 for a header over it, 400 for anything else malformed."""
    if isinstance(exc, LineTooLong):
        # aiohttp passes the limit that was exceeded: the header field limit means a header
        if len(exc.args) > 1 and str(exc.args[1]) == str(MAX_HEADER_FIELD):
            return problem(
                431, "Request Header Fields Too Large",
                f"a header is longer than {MAX_HEADER_FIELD} bytes",
            )
        return problem(
            414, "URI Too Long", f"the request line is longer than {MAX_REQUEST_LINE} bytes"
        )
    return problem(400, "Bad Request", "the request is not valid HTTP", kind="malformed-request")


class _ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering parser errors with problem+json."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Parser errors as problem documents; everything else as aiohttp does."""
        if isinstance(exc, BadHttpMessage) and request.writer.output_size == 0:
            log.debug("refused a malformed request from %s: %s", request.remote, exc)
            resp = parser_problem(exc)
            resp.force_close()
            return resp
        return super().handle_error(request, status, exc, message)


class _ProblemServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class _Runner(web.AppRunner):
    """An AppRunner whose connections use `_ProblemRequestHandler` (aiohttp offers no hook for
    the responses its HTTP parser sends, so the server's class is swapped once it is made)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _ProblemServer
        return server


class ApiServer:
    """Serves `app` on `sock`; `stop` stops accepting, ends streams and waits `grace` s.

    A connection that has not sent a complete request head `header_timeout` s after connecting
    (or after its previous response) is closed: aiohttp's keep-alive timer runs from the
    connection's start, so half-open requests cannot pile up.
    """

    def __init__(
        self,
        app: web.Application,
        sock: socket.socket,
        grace: float,
        header_timeout: float = 10.0,
        access_log: bool = True,
    ) -> None:
        self.app = app
        self.sock = sock
        self.address = url_host(sock)
        """host:port the API listens on."""
        self._runner = _Runner(
            app,
            access_log_class=AccessLogger,
            access_log=logging.getLogger("aiohttp.access") if access_log else None,
            shutdown_timeout=grace,
            keepalive_timeout=header_timeout,
        )
        self._started = False

    async def start(self) -> None:
        """Start serving (the app's startup hooks run first)."""
        await self._runner.setup()
        self._started = True
        await web.SockSite(self._runner, self.sock, backlog=1024).start()
        log.info("API listening on %s", self.address)

    async def stop(self) -> None:
        """Stop accepting, end streams, give requests in flight the grace, then close."""
        if self._started:
            self._started = False
            log.info("shutting down the API")
            await self._runner.cleanup()
        else:
            self.sock.close()
