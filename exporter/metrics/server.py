"""The /metrics endpoint: a scheduled snapshot job and an aiohttp server on `metrics.listen`."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web
from apscheduler.schedulers.base import BaseScheduler
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from exporter.config import Config
from exporter.config.schema import MetricsConfig, parse_listen
from exporter.db import describe, is_unreachable
from exporter.ingest import PollResult
from exporter.metrics.collector import (
    MetricsState,
    SelfCollector,
    SnapshotCollector,
    render_snapshot,
)
from exporter.metrics.snapshot import Snapshot, build_snapshot
from exporter.service import ExporterService, ExporterState, error_reason, scheduled

log = logging.getLogger(__name__)
SNAPSHOT_JOB_ID = "metrics_snapshot"


@dataclass(frozen=True, slots=True)
class Rendered:
    """A snapshot's exposition, plain and as the start of a gzip stream that can be continued."""

    text: bytes
    gzip_head: bytes
    gzip: Any

    @classmethod
    def of(cls, text: bytes) -> Rendered:
        """Render `text` once: the plain bytes and a gzip compressor fed with them."""
        c = zlib.compressobj(1, zlib.DEFLATED, 31)
        return cls(text, c.compress(text), c)

    def plain(self, tail: bytes) -> bytes:
        """The plain body with `tail` appended."""
        return self.text + tail

    def gzipped(self, tail: bytes) -> bytes:
        """One gzip member of text + tail; only `tail` is compressed now."""
        c = self.gzip.copy()
        return self.gzip_head + c.compress(tail) + c.flush()


def _render(snapshot: Snapshot) -> Rendered:
    return Rendered.of(render_snapshot(snapshot))


class MetricsServer:
    """Owns the private registry, the current snapshot and the HTTP server that serves them."""

    # The snapshot part of the exposition is rendered (and gzip-compressed) once per snapshot,
    # off the event loop; a scrape renders only the self-metrics and appends them, so it costs
    # the same however much data the store holds.

    def __init__(
        self,
        cfg: MetricsConfig,
        exporter: ExporterState,
        pool: Callable[[], asyncpg.Pool | None],
        store_timeout: timedelta = timedelta(seconds=30),
    ):
        self.cfg = cfg
        self.exporter = exporter
        self.state = MetricsState()
        self._pool = pool
        self._timeout = store_timeout.total_seconds()
        self.snapshot_collector = SnapshotCollector(lambda: self.state.snapshot)
        self.self_collector = SelfCollector(exporter, self.state)
        self.registry = CollectorRegistry(auto_describe=False)
        """The private registry with every collector (what /metrics serves)."""
        self.registry.register(self.snapshot_collector)
        self.registry.register(self.self_collector)
        self._self_registry = CollectorRegistry(auto_describe=False)
        self._self_registry.register(self.self_collector)
        self._rendered = Rendered.of(b"")
        self._runner: web.AppRunner | None = None
        self._failing = False
        self.port: int | None = None

    # snapshot ------------------------------------------------------------------------------

    async def refresh(self, now: datetime | None = None) -> Snapshot | None:
        """Build, render and publish a new snapshot; on failure keep serving the last one."""
        pool = self._pool()
        try:
            if pool is None:
                raise ConnectionError("store pool is not open")
            snapshot = await asyncio.wait_for(self._build(pool, now), self._timeout)
            rendered = await asyncio.to_thread(_render, snapshot)
        except Exception as exc:
            reason = "timeout" if isinstance(exc, TimeoutError) else error_reason(exc)
            self.state.snapshot_errors[reason] += 1
            if pool is None or is_unreachable(exc):
                self.exporter.health.set("store", False, describe(exc))
            if not self._failing:
                log.error("metrics snapshot failed (%s): %s", reason, describe(exc))
            self._failing = True
            return None
        if self._failing:
            log.info("metrics snapshot works again")
            self._failing = False
        self._rendered = rendered
        self.state.publish(snapshot)
        self.exporter.health.set("store", True)
        if snapshot.dropped_series:
            log.warning(
                "metrics.max_series %d: left out %d series of %d workflows",
                self.cfg.max_series,
                snapshot.dropped_series,
                snapshot.dropped_workflows,
            )
        return snapshot

    async def _build(self, pool: asyncpg.Pool, now: datetime | None) -> Snapshot:
        async with pool.acquire() as conn:
            return await build_snapshot(conn, self.cfg, now)

    @scheduled
    async def _refresh_job(self) -> None:
        await self.refresh()

    def on_poll(self, result: PollResult | None, exc: BaseException | None) -> None:
        """ExporterService listener: record the poll duration."""
        if result is not None:
            self.state.polls.observe(result.seconds)

    def schedule(self, scheduler: BaseScheduler) -> None:
        """Add the snapshot job (first run now) to `scheduler`."""
        scheduler.add_job(
            self._refresh_job,
            "interval",
            seconds=self.cfg.snapshot_interval.total_seconds(),
            next_run_time=datetime.now().astimezone(),
            max_instances=1,
            coalesce=True,
            id=SNAPSHOT_JOB_ID,
            replace_existing=True,
        )

    # exposition ----------------------------------------------------------------------------

    def exposition(self, gzip: bool = False) -> bytes:
        """The full text exposition: the rendered snapshot, then fresh self-metrics."""
        tail = generate_latest(self._self_registry)
        rendered = self._rendered
        return rendered.gzipped(tail) if gzip else rendered.plain(tail)

    async def _metrics(self, request: web.Request) -> web.Response:
        headers = {"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
        gzip = "gzip" in request.headers.get("Accept-Encoding", "")
        if gzip:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=self.exposition(gzip), headers=headers)

    async def _healthz(self, request: web.Request) -> web.Response:
        snap = self.state.snapshot
        body = {
            "status": "ok",
            "snapshot": snap is not None,
            "snapshot_age_seconds": round(self.state.snapshot_age(), 3),
            "store_up": self.exporter.health.store_up,
            "source_up": self.exporter.health.source_up,
            "leader": self.exporter.is_leader,
        }
        return web.Response(text=json.dumps(body), content_type="application/json")

    def app(self) -> web.Application:
        """The aiohttp application serving /metrics and /healthz."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def start(self, listen: str | None = None) -> None:
        """Listen on `listen` (default `metrics.listen`; port 0 picks a free port)."""
        host, port = _split(listen or self.cfg.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
        self.port = sock.getsockname()[1]
        # A connection that sends no complete request head `header_timeout` after connecting
        # (or after its previous response) is closed: aiohttp's keep-alive timer runs from the
        # start of the connection, so slow clients cannot pile up.
        self._runner = web.AppRunner(
            self.app(),
            access_log=None,
            keepalive_timeout=self.cfg.header_timeout.total_seconds(),
        )
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        log.info("metrics on http://%s:%s/metrics", host, self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _split(listen: str) -> tuple[str, int]:
    if listen.endswith(":0"):
        return listen[:-2].strip("[]"), 0
    return parse_listen(listen)


def attach_metrics(
    service: ExporterService, scheduler: BaseScheduler, cfg: Config | MetricsConfig | None = None
) -> MetricsServer:
    """Wire metrics to an opened service: poll listener and snapshot job; caller awaits start()."""
    full = service.cfg
    metrics_cfg = cfg.metrics if isinstance(cfg, Config) else (cfg or full.metrics)
    server = MetricsServer(
        metrics_cfg, service.state, lambda: service.store, full.store.statement_timeout
    )
    service.listeners.append(server.on_poll)
    server.schedule(scheduler)
    return server
