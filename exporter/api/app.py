"""The aiohttp application factory: shared state, middleware, lifecycle and route modules.

Route modules are listed in `ROUTE_MODULES`; each exposes `register(app)` and adds
its routes under `API_PREFIX`. Add a module to the list (or pass `route_modules`)
to serve more endpoints with the same auth, problem and time-filter helpers.

The store pool (and the exporter service, when given) belong to the caller, who
closes them after the app's cleanup. Without a service, refresh answers 503.

While the store is unreachable (or the schema is not in place, or a query outlives the
statement timeout) requests that need it answer 503 with `Retry-After`; the probes and
the OpenAPI document do not need it.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from exporter.api import cors
from exporter.api.auth import TOKENS, TokenTable
from exporter.api.cors import options_middleware
from exporter.api.errors import Handler, ProblemError, problem_middleware
from exporter.api.sse import IngestHub, ResultCache
from exporter.api.tokenstore import StoredTokens
from exporter.config import Config
from exporter.db import describe, is_unreachable
from exporter.service import ExporterService

API_PREFIX = "/api/v1"
ROUTE_MODULES: tuple[str, ...] = (
    "exporter.api.routes",
    "exporter.api.exports",
    "exporter.api.retention",
    "exporter.api.problems",
)
"""Modules whose `register(app)` adds routes; later issues append theirs here."""

MAX_REQUEST_LINE = 4096
MAX_HEADER_FIELD = 8190
STORE_RETRY_AFTER_S = 5
"""`Retry-After` of a 503 caused by the store."""

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """Knobs of the app that are not in the config file (tests shorten them)."""

    heartbeat: float = 15.0
    cache_entries: int = 4096
    cache_ttl: float = 30.0
    cache_lag: float = 10.0
    shutdown_grace: float = 5.0
    token_reload: float = 1.0
    token_stale_after: float = 5.0


CONFIG = web.AppKey("wfa_config", Config)
POOL = web.AppKey("wfa_pool", asyncpg.Pool)
SERVICE = web.AppKey("wfa_service", object)
HUB = web.AppKey("wfa_hub", IngestHub)
CACHE = web.AppKey("wfa_cache", ResultCache)
SETTINGS = web.AppKey("wfa_settings", ApiSettings)


class OutageLog:
    """Logs requests failed by the store at most once per `interval` s, with a count."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -interval
        self._quiet = 0

    def note(self, request: web.Request, cause: str) -> None:
        """Count one failed request; log it unless a line was written less than `interval` ago."""
        now = time.monotonic()
        if now - self._last < self.interval:
            self._quiet += 1
            return
        more = f" ({self._quiet} more since the last line)" if self._quiet else ""
        log.warning("%s %s answered 503: %s%s", request.method, request.path, cause, more)
        self._last, self._quiet = now, 0


OUTAGES = web.AppKey("wfa_outages", OutageLog)


def _unavailable(detail: str) -> ProblemError:
    return ProblemError(
        503,
        "Service Unavailable",
        detail,
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


@web.middleware
async def store_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn a store that is down, unmigrated or too slow into 503 with `Retry-After`."""
    try:
        return await handler(request)
    except (ProblemError, web.HTTPException):
        raise
    except asyncpg.QueryCanceledError as exc:
        request.app[OUTAGES].note(request, describe(exc))
        raise _unavailable(
            "the store did not answer within its statement timeout; try again later"
        ) from None
    except asyncpg.UndefinedTableError as exc:
        request.app[OUTAGES].note(request, describe(exc))
        raise _unavailable("the store schema is not in place yet (`wfa migrate`)") from None
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        # Connections opened before an outage are dead: replace them all on the next acquire.
        await request.app[POOL].expire_connections()
        request.app[OUTAGES].note(request, describe(exc))
        raise _unavailable("the store is not reachable; try again later") from None


def service_of(app: web.Application) -> ExporterService | None:
    """The exporter service running in this process, if any."""
    svc = app[SERVICE]
    return svc if isinstance(svc, ExporterService) else None


async def _start_hub(app: web.Application) -> None:
    await app[HUB].start()


async def _start_tokens(app: web.Application) -> None:
    stored = app[TOKENS].stored
    if stored is not None:
        stored.on_revoked(app[HUB].end_streams_of)
        await stored.start()


async def _stop_tokens(app: web.Application) -> None:
    stored = app[TOKENS].stored
    if stored is not None:
        await stored.stop()


async def _stop_streams(app: web.Application) -> None:
    app[HUB].close_streams()


async def _close_hub(app: web.Application) -> None:
    await app[HUB].close()
    await app[CACHE].close()


def create_app(
    cfg: Config,
    store_pool: asyncpg.Pool,
    service: ExporterService | None = None,
    *,
    settings: ApiSettings | None = None,
    route_modules: Sequence[str] = ROUTE_MODULES,
) -> web.Application:
    """Build the API application over an open store pool."""
    settings = settings or ApiSettings()
    app = web.Application(
        middlewares=[problem_middleware, options_middleware, store_middleware],
        client_max_size=cfg.api.max_body_bytes,
        handler_args={"max_line_size": MAX_REQUEST_LINE, "max_field_size": MAX_HEADER_FIELD},
    )
    hub = IngestHub(cfg.store_dsn)
    app[CONFIG] = cfg
    app[POOL] = store_pool
    app[SERVICE] = service
    app[HUB] = hub
    app[CACHE] = ResultCache(hub, settings.cache_entries, settings.cache_ttl, settings.cache_lag)
    app[SETTINGS] = settings
    configured = TokenTable(cfg.api.tokens)
    stored = StoredTokens(
        store_pool,
        interval=settings.token_reload,
        stale_after=settings.token_stale_after,
        reserved_names=configured.config_names,
        reserved_digests=configured.config_digests,
    )
    app[TOKENS] = TokenTable(cfg.api.tokens, stored)
    app[OUTAGES] = OutageLog()
    cors.setup(app, cfg.api.cors_origins)
    app.on_startup.append(_start_hub)
    app.on_startup.append(_start_tokens)
    app.on_shutdown.append(_stop_streams)
    app.on_cleanup.append(_stop_tokens)
    app.on_cleanup.append(_close_hub)
    for name in route_modules:
        importlib.import_module(name).register(app)
    return app
