"""The aiohttp application factory: shared state, middleware, lifecycle and route modules.

Route modules are listed in `ROUTE_MODULES`; each exposes `register(app)` and adds
its routes under `API_PREFIX`. Add a module to the list (or pass `route_modules`)
to serve more endpoints with the same auth, problem and time-filter helpers.

The store pool (and the exporter service, when given) belong to the caller, who
closes them after the app's cleanup. Without a service, refresh answers 503.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from exporter.api.auth import TOKENS, TokenTable
from exporter.api.errors import problem_middleware
from exporter.api.sse import IngestHub, ResultCache
from exporter.api.tokenstore import StoredTokens
from exporter.config import Config
from exporter.service import ExporterService

API_PREFIX = "/api/v1"
ROUTE_MODULES: tuple[str, ...] = (
    "exporter.api.routes",
    "exporter.api.exports",
    "exporter.api.retention",
)
"""Modules whose `register(app)` adds routes; later issues append theirs here."""

MAX_REQUEST_LINE = 4096
MAX_HEADER_FIELD = 8190


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
        middlewares=[problem_middleware],
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
    app.on_startup.append(_start_hub)
    app.on_startup.append(_start_tokens)
    app.on_shutdown.append(_stop_streams)
    app.on_cleanup.append(_stop_tokens)
    app.on_cleanup.append(_close_hub)
    for name in route_modules:
        importlib.import_module(name).register(app)
    return app
