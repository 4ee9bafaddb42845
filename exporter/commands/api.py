"""Subcommands: api (the HTTP API alone), run (exporter + API in one process)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

import asyncpg
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.api import ApiSettings, create_app
from exporter.api.errors import AccessLogger
from exporter.commands.common import (
    StartupFailed,
    add_config_arg,
    config_or_exit,
    open_until_stopped,
    raise_open_files_limit,
    run,
    setup_logging,
    stop_event,
)
from exporter.config import Config
from exporter.config.schema import parse_listen
from exporter.db import Backoff, describe, lazy_pool, retry_unreachable, warm_up
from exporter.metrics import attach_metrics
from exporter.service import ExporterService
from exporter.store.migrate import SchemaError, require_current

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    p = sub.add_parser("api", help="serve the HTTP API (refresh answers 503 without exporter)")
    add_config_arg(p)
    p.set_defaults(func=cmd_api)

    p = sub.add_parser("run", help="run the exporter and the HTTP API in one process")
    add_config_arg(p)
    p.set_defaults(func=cmd_run)


async def serve(
    app: web.Application,
    listen: str,
    stop: asyncio.Event,
    grace: float,
    header_timeout: float = 10.0,
) -> None:
    """Serve `app` on `listen` until `stop`; then stop accepting, end streams, wait `grace` s.

    A connection that has not sent a complete request head `header_timeout` s after connecting
    (or after its previous response) is closed: aiohttp's keep-alive timer runs from the
    connection's start, so half-open requests cannot pile up.
    """
    host, port = parse_listen(listen)
    runner = web.AppRunner(
        app,
        access_log_class=AccessLogger,
        shutdown_timeout=grace,
        keepalive_timeout=header_timeout,
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        log.info("API listening on %s", listen)
        await stop.wait()
        log.info("shutting down the API")
    finally:
        await runner.cleanup()


async def _check_schema(pool: asyncpg.Pool, cfg: Config) -> None:
    """Wait for the store, say whether its schema is current, open a few connections."""

    async def check() -> None:
        async with pool.acquire() as conn:
            await require_current(conn)

    st = cfg.store
    backoff = Backoff(
        st.connect_retry_delay.total_seconds(), st.connect_retry_max_delay.total_seconds()
    )
    try:
        await retry_unreachable(check, "store", retries=None, backoff=backoff)
    except SchemaError as exc:
        log.warning("%s (readyz answers 503 until then)", exc)
    except Exception as exc:
        log.warning("store check failed: %s", describe(exc))
    await warm_up(pool, st.pool_min_size)


async def _api(cfg: Config, settings: ApiSettings) -> int:
    raise_open_files_limit()
    stop = stop_event()
    st = cfg.store
    pool = await lazy_pool(
        cfg.store_dsn,
        max_size=st.pool_max_size,
        statement_timeout=st.statement_timeout,
        application_name="wfa-api",
    )
    checker = asyncio.create_task(_check_schema(pool, cfg), name="wfa-schema-check")
    try:
        app = create_app(cfg, pool, None, settings=settings)
        await serve(
            app,
            cfg.api.listen,
            stop,
            settings.shutdown_grace,
            cfg.api.header_timeout.total_seconds(),
        )
    finally:
        checker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checker
        await pool.close()
    return 0


async def _start_exporter(
    service: ExporterService, scheduler: AsyncIOScheduler, stop: asyncio.Event
) -> int:
    """Open the service when the store allows, then schedule its jobs; 1 when it cannot."""
    try:
        if await open_until_stopped(service, stop):
            service.start(scheduler)
        return 0
    except StartupFailed:
        stop.set()
        return 1


async def _run(cfg: Config, settings: ApiSettings) -> int:
    raise_open_files_limit()
    stop = stop_event()
    service = ExporterService(cfg)
    await service.connect()
    assert service.store is not None
    scheduler = AsyncIOScheduler(timezone="UTC")
    service.watch(scheduler)
    metrics = attach_metrics(service, scheduler, cfg)
    starter: asyncio.Task[int] | None = None
    try:
        await metrics.start()
        scheduler.start()
        app = create_app(cfg, service.store, service, settings=settings)
        starter = asyncio.create_task(_start_exporter(service, scheduler, stop), name="wfa-start")
        await serve(
            app,
            cfg.api.listen,
            stop,
            settings.shutdown_grace,
            cfg.api.header_timeout.total_seconds(),
        )
    finally:
        code = 0
        if starter is not None:
            if not starter.done():
                starter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                code = await starter
        if scheduler.running:
            scheduler.shutdown(wait=False)
        await metrics.stop()
        await _close_service(service, settings.shutdown_grace)
    return code


async def _close_service(service: ExporterService, grace: float) -> None:
    """Close the service's pools, terminating them if in-flight work outlasts `grace` s."""
    try:
        async with asyncio.timeout(grace):
            await service.close()
    except TimeoutError:
        log.warning("in-flight store work outlasted %.0f s; terminating connections", grace)
        for pool in (service.source, service.store):
            if pool is not None:
                pool.terminate()


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the API alone."""
    setup_logging()
    return run(_api(config_or_exit(args), ApiSettings()))


def cmd_run(args: argparse.Namespace) -> int:
    """Run exporter, metrics and API in one process, one loop, one store pool."""
    setup_logging()
    return run(_run(config_or_exit(args), ApiSettings()))
