"""The parts a long-running command is composed of, each added to a `Runtime`.

`wfa exporter` = exporter + metrics; `wfa api` = store pool + API; `wfa run` = exporter +
metrics + API over the exporter's pool; `wfa demo` adds its cluster, history, workload and
Prometheus. Each part registers its startup and shutdown steps; the runtime orders them.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import asyncpg

from exporter.api import ApiSettings, create_app
from exporter.api.server import ApiServer
from exporter.commands.failures import explain
from exporter.config import Config
from exporter.db import Backoff, close_pools, describe, lazy_pool, retry_unreachable, warm_up
from exporter.metrics import MetricsServer, attach_metrics
from exporter.runtime import Runtime, StartupFailed, bind
from exporter.service import ExporterService
from exporter.store.migrate import SchemaError, require_current

log = logging.getLogger(__name__)


def add_exporter(rt: Runtime, cfg: Config, *, wait_for_store: bool = True) -> ExporterService:
    """The exporter: its pools at once, the health probe, then (once the store answers and the
    schema is in place) the poll, maintenance, retention and reconcile jobs.

    With `wait_for_store` the store is awaited as long as it takes, in the background; else
    startup fails after `store.connect_retries`.
    """
    service = ExporterService(cfg)
    rt.on_startup("store and source pools", service.connect)
    rt.on_shutdown("store and source pools", lambda: service.close(rt.grace))
    service.watch(rt.jobs)

    async def open_then_start() -> None:
        try:
            await service.open(forever=wait_for_store)
        except Exception as exc:
            rt.fail(_startup_failure(exc))
            return
        service.start(rt.jobs)

    if wait_for_store:
        rt.on_startup("exporter", lambda: rt.start_soon(open_then_start, "wfa-open"))
    else:
        rt.on_startup("exporter", open_then_start)
    return service


def add_metrics(
    rt: Runtime, service: ExporterService, cfg: Config, listen: str | None = None
) -> MetricsServer:
    """/metrics, /healthz and the runbook on `metrics.listen` (or `listen`), with the snapshot
    job; serves self-metrics while the exporter waits for the store."""
    metrics = attach_metrics(service, rt.jobs, cfg)
    rt.on_startup("metrics", lambda: metrics.start(listen))
    rt.on_shutdown("metrics", metrics.stop)
    return metrics


def add_api(
    rt: Runtime,
    cfg: Config,
    pool: Callable[[], asyncpg.Pool | None],
    service: ExporterService | None,
    settings: ApiSettings,
    sock: socket.socket | None = None,
    access_log: bool = True,
) -> Callable[[], ApiServer | None]:
    """The HTTP API on `api.listen` (or an already bound `sock`) over the store pool `pool()`
    gives once the earlier parts started; returns a getter of the running server."""
    holder: list[ApiServer] = []

    async def start() -> None:
        store = pool()
        assert store is not None, "the store pool is created by an earlier part"
        listener = sock or bind(cfg.api.listen, "api.listen")
        server = ApiServer(
            create_app(cfg, store, service, settings=settings),
            listener,
            settings.shutdown_grace,
            cfg.api.header_timeout.total_seconds(),
            access_log,
        )
        holder.append(server)
        await server.start()

    async def stop() -> None:
        for server in holder:
            await server.stop()

    rt.on_startup("API", start)
    rt.on_shutdown("API", stop)
    return lambda: holder[0] if holder else None


def add_store_pool(rt: Runtime, cfg: Config) -> Callable[[], asyncpg.Pool | None]:
    """The API's own store pool (without an exporter): created at once, connecting on use;
    a check in the background says when the store answers and whether its schema is current."""
    st = cfg.store
    pools: list[asyncpg.Pool] = []

    async def start() -> None:
        pools.append(
            await lazy_pool(
                cfg.store_dsn,
                max_size=st.pool_max_size,
                statement_timeout=st.statement_timeout,
                application_name="wfa-api",
            )
        )
        rt.spawn(_check_schema(rt, pools[0], cfg), "wfa-schema-check")

    rt.on_startup("store pool", start)
    rt.on_shutdown("store pool", lambda: close_pools(pools, rt.grace))
    return lambda: pools[0] if pools else None


async def _check_schema(rt: Runtime, pool: asyncpg.Pool, cfg: Config) -> None:
    """Wait for the store, say whether its schema is current, open a few connections.

    A store that is down or not migrated yet is waited for (readyz answers 503 meanwhile);
    a DSN or login the server refuses stops the process.
    """

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
        advice = explain(exc)
        if advice is not None:
            rt.fail(StartupFailed(advice))
            return
        log.warning("store check failed: %s", describe(exc))
    await warm_up(pool, st.pool_min_size)


def _startup_failure(exc: BaseException) -> BaseException:
    """The exporter cannot start: a one-line reason when the user can fix it, else `exc`."""
    advice = explain(exc)
    if advice is not None:
        return StartupFailed(f"cannot start: {advice}")
    log.error("cannot start", exc_info=exc)
    return exc
