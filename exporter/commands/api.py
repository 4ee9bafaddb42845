"""Subcommands: api (the HTTP API alone), run (exporter + API in one process)."""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from exporter.api import ApiSettings
from exporter.api.server import ApiServer
from exporter.commands.common import add_config_arg, config_or_exit, run, setup_logging
from exporter.commands.parts import add_api, add_exporter, add_metrics, add_store_pool
from exporter.config import Config
from exporter.runtime import Runtime, bind, raise_open_files_limit


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
    """Serve `app` on `listen` until `stop`, as `wfa api` does."""
    server = ApiServer(app, bind(listen, "api.listen"), grace, header_timeout)
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()


async def _api(cfg: Config, settings: ApiSettings) -> int:
    raise_open_files_limit()
    rt = Runtime(settings.shutdown_grace)
    pool = add_store_pool(rt, cfg)
    add_api(rt, cfg, pool, None, settings)
    return await rt.run()


async def _run(cfg: Config, settings: ApiSettings) -> int:
    raise_open_files_limit()
    rt = Runtime(settings.shutdown_grace)
    service = add_exporter(rt, cfg)
    add_metrics(rt, service, cfg)
    add_api(rt, cfg, lambda: service.store, service, settings)
    return await rt.run()


def cmd_api(args: argparse.Namespace) -> int:
    """Serve the API alone."""
    setup_logging()
    return run(_api(config_or_exit(args), ApiSettings()))


def cmd_run(args: argparse.Namespace) -> int:
    """Run exporter, metrics and API in one process, one loop, one store pool."""
    setup_logging()
    return run(_run(config_or_exit(args), ApiSettings()))
