"""The /metrics endpoint: a scheduled snapshot job and an aiohttp server on `metrics.listen`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import exposition as openmetrics

from exporter.config import Config
from exporter.config.schema import MetricsConfig
from exporter.db import describe, is_unreachable
from exporter.ingest import PollResult
from exporter.metrics.activity import ActivityLog
from exporter.metrics.collector import (
    MetricsState,
    SelfCollector,
    SnapshotCollector,
    render_snapshot,
)
from exporter.metrics.runbook import runbook_routes
from exporter.metrics.snapshot import Snapshot, build_snapshot
from exporter.runtime import Jobs, bind
from exporter.service import ExporterService, ExporterState, error_reason

log = logging.getLogger(__name__)
SNAPSHOT_JOB_ID = "metrics_snapshot"
OM_EOF = b"# EOF\n"


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


def _render_openmetrics(snapshot: Snapshot) -> Rendered:
    """The snapshot's families in OpenMetrics text, without the final `# EOF`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    return Rendered.of(openmetrics.generate_latest(registry).removesuffix(OM_EOF))


def _render_both(snapshot: Snapshot) -> tuple[Rendered, Rendered]:
    return _render(snapshot), _render_openmetrics(snapshot)


EMPTY = Rendered.of(b"")


class MetricsServer:
    """Owns the private registry, the current snapshot and the HTTP server that serves them."""

    # The snapshot part of the exposition is rendered (and gzip-compressed) once per snapshot,
    # off the event loop; a scrape renders only the self-metrics and appends them, so it costs
    # the same however much data the store holds.
    #
    # Only the leader serves the workflow series (they are the store's, the same on every
    # replica), and only from a snapshot read after it became the leader: a replica taking over
    # never serves a counter older than what the previous leader served. A standby serves its
    # self-metrics, with wfa_exporter_leader 0, and builds no snapshot.

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
        self.snapshot_collector = SnapshotCollector(self.served)
        self.self_collector = SelfCollector(exporter, self.state)
        process = ProcessCollector(registry=None)
        self.registry = CollectorRegistry(auto_describe=False)
        """The private registry with every collector (what /metrics serves)."""
        self._self_registry = CollectorRegistry(auto_describe=False)
        """Self-metrics and process metrics only: rendered at each scrape."""
        self.registry.register(self.snapshot_collector)
        for registry in (self.registry, self._self_registry):
            registry.register(self.self_collector)
            registry.register(process)
        self._rendered = EMPTY
        self._openmetrics = EMPTY
        self._leader_since: float | None = None
        self._jobs: Jobs | None = None
        self.activity = ActivityLog(exporter)
        self._runner: web.AppRunner | None = None
        self._failing = False
        self.port: int | None = None

    # leadership ----------------------------------------------------------------------------

    def leading(self) -> bool:
        """Whether this replica leads now (and since when)."""
        self.activity.leadership(self.exporter.is_leader)
        if not self.exporter.is_leader:
            self._leader_since = None
            return False
        if self._leader_since is None:
            self._leader_since = time.time()
        return True

    def _snapshot_now(self) -> None:
        """Run the scheduled snapshot job now (a new leader has nothing to serve yet)."""
        if self._jobs is not None:
            self._jobs.run_soon(SNAPSHOT_JOB_ID)

    def served(self) -> Snapshot | None:
        """The snapshot whose workflow series are served: the leader's, read while leading."""
        snap = self.state.snapshot
        if not self.leading() or snap is None or self._leader_since is None:
            return None
        return snap if snap.built_at >= self._leader_since else None

    # snapshot ------------------------------------------------------------------------------

    async def refresh(self, now: datetime | None = None) -> Snapshot | None:
        """Build, render and publish a new snapshot (leader only); on failure keep the last."""
        if not self.leading():
            return None
        pool = self._pool()
        try:
            if pool is None:
                raise ConnectionError("store pool is not open")
            snapshot = await asyncio.wait_for(self._build(pool, now), self._timeout)
            rendered, om = await asyncio.to_thread(_render_both, snapshot)
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
        self._rendered, self._openmetrics = rendered, om
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

    async def _refresh_job(self) -> None:
        await self.refresh()

    def on_poll(self, result: PollResult | None, exc: BaseException | None) -> None:
        """ExporterService listener: poll duration, store health, leadership, activity log."""
        if result is not None:
            self.state.polls.observe(result.seconds)
        if result is not None and self.leading() and self.served() is None:
            self._snapshot_now()
        self.activity.on_poll(result, exc)

    def schedule(self, jobs: Jobs) -> None:
        """Add the snapshot job (first run now); count the jobs' failures in the self-metrics."""
        self._jobs = jobs
        self.state.job_failures = jobs.failures
        jobs.every(
            SNAPSHOT_JOB_ID,
            self._refresh_job,
            self.cfg.snapshot_interval,
            datetime.now().astimezone(),
        )

    # exposition ----------------------------------------------------------------------------

    def exposition(self, gzip: bool = False) -> bytes:
        """The full text exposition: the rendered snapshot (leader), then fresh self-metrics."""
        tail = generate_latest(self._self_registry)
        rendered = self._rendered if self.served() is not None else EMPTY
        return rendered.gzipped(tail) if gzip else rendered.plain(tail)

    def openmetrics(self, gzip: bool = False) -> bytes:
        """The full OpenMetrics exposition: snapshot families (leader), self-metrics, `# EOF`."""
        tail = openmetrics.generate_latest(self._self_registry)
        rendered = self._openmetrics if self.served() is not None else EMPTY
        return rendered.gzipped(tail) if gzip else rendered.plain(tail)

    def negotiate(self, accept: str, gzip: bool = False) -> tuple[bytes, str]:
        """(body, content type) for an Accept header, chosen as prometheus_client does."""
        _, content_type = choose_encoder(accept)
        if content_type.startswith("application/openmetrics-text"):
            return self.openmetrics(gzip), content_type
        return self.exposition(gzip), content_type

    async def _metrics(self, request: web.Request) -> web.Response:
        gzip = "gzip" in request.headers.get("Accept-Encoding", "")
        body, content_type = self.negotiate(request.headers.get("Accept", ""), gzip)
        headers = {"Content-Type": content_type}
        if gzip:
            headers["Content-Encoding"] = "gzip"
        return web.Response(body=body, headers=headers)

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
        app.router.add_routes(runbook_routes())
        return app

    async def start(self, listen: str | None = None) -> None:
        """Listen on `listen` (default `metrics.listen`; port 0 picks a free port)."""
        sock = bind(listen or self.cfg.listen, "metrics.listen")
        host, self.port = sock.getsockname()[:2]
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


def attach_metrics(
    service: ExporterService, jobs: Jobs, cfg: Config | MetricsConfig | None = None
) -> MetricsServer:
    """Wire metrics to an opened service: poll listener and snapshot job; caller awaits start()."""
    full = service.cfg
    metrics_cfg = cfg.metrics if isinstance(cfg, Config) else (cfg or full.metrics)
    server = MetricsServer(
        metrics_cfg, service.state, lambda: service.store, full.store.statement_timeout
    )
    service.listeners.append(server.on_poll)
    server.schedule(jobs)
    return server
