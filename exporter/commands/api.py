"""Subcommands: api (the HTTP API alone), run (exporter + API in one process)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal

import asyncpg
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.api import ApiSettings, create_app
from exporter.api.errors import AccessLogger
from exporter.commands.common import add_config_arg, config_or_exit, run, setup_logging
from exporter.config import Config
from exporter.config.schema import parse_listen
from exporter.db import create_pool
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


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard limit (many SSE clients)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(app: web.Application, listen: str, stop: asyncio.Event, grace: float) -> None:
    """Serve `app` on `listen` until `stop`; then stop accepting, end streams, wait `grace` s."""
    host, port = parse_listen(listen)
    runner = web.AppRunner(app, access_log_class=AccessLogger, shutdown_timeout=grace)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, backlog=1024).start()
        log.info("API listening on %s", listen)
        await stop.wait()
        log.info("shutting down the API")
    finally:
        await runner.cleanup()


async def _check_schema(pool: asyncpg.Pool) -> None:
    try:
        async with pool.acquire() as conn:
            await require_current(conn)
    except SchemaError as exc:
        log.warning("%s (readyz answers 503 until then)", exc)


async def _api(cfg: Config, settings: ApiSettings) -> int:
    raise_open_files_limit()
    st = cfg.store
    pool = await create_pool(
        cfg.store_dsn,
        min_size=st.pool_min_size,
        max_size=st.pool_max_size,
        statement_timeout=st.statement_timeout,
        retries=st.connect_retries,
        retry_delay=st.connect_retry_delay,
        application_name="wfa-api",
    )
    try:
        await _check_schema(pool)
        app = create_app(cfg, pool, None, settings=settings)
        await serve(app, cfg.api.listen, _stop_event(), settings.shutdown_grace)
    finally:
        await pool.close()
    return 0


async def _run(cfg: Config, settings: ApiSettings) -> int:
    raise_open_files_limit()
    stop = _stop_event()
    service = ExporterService(cfg)
    await service.open()
    scheduler = AsyncIOScheduler(timezone="UTC")
    metrics = None
    try:
        assert service.store is not None
        service.start(scheduler)
        metrics = attach_metrics(service, scheduler, cfg)
        await metrics.start()
        scheduler.start()
        app = create_app(cfg, service.store, service, settings=settings)
        await serve(app, cfg.api.listen, stop, settings.shutdown_grace)
    finally:
        if scheduler.running:
            scheduler.shutdown(wait=False)
        if metrics is not None:
            await metrics.stop()
        await _close_service(service, settings.shutdown_grace)
    return 0


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
