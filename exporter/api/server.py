"""The API's HTTP listener: an aiohttp runner on a bound socket, stopped within a grace."""

from __future__ import annotations

import logging
import socket

from aiohttp import web

from exporter.api.errors import AccessLogger
from exporter.runtime import url_host

log = logging.getLogger(__name__)


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
        self._runner = web.AppRunner(
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
