"""The exporter process: pools, single-poller lock, scheduled poll, refresh and upkeep jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from exporter import health, retention
from exporter.config import Config
from exporter.db import (
    CONNECT_ERRORS,
    Backoff,
    close_pools,
    describe,
    is_unreachable,
    lazy_pool,
    probe,
    retry_unreachable,
    warm_up,
)
from exporter.health import Health
from exporter.ingest import Ingestor, IngestSettings, PollResult
from exporter.leadership import Leadership, NotLeader
from exporter.reconcile import ReconcileResult, reconcile
from exporter.runtime import Jobs
from exporter.store import Backend, RefreshResult, backend_for
from exporter.store.migrate import migrate

log = logging.getLogger(__name__)

RETENTION_FIRST_RUN = timedelta(minutes=5)
"""Delay of the first scheduled retention run after start; then every retention.run_interval."""
HEALTH_INTERVAL = timedelta(seconds=5)
"""How often the store and source pools are probed (polls also tell, when they run)."""
MAINTAIN_INTERVAL = timedelta(hours=1)
"""How often the backend's upkeep runs (partitions ahead, policies, compression)."""


def ingest_settings(cfg: Config) -> IngestSettings:
    """The ingest loop's view of the config."""
    s, e = cfg.source, cfg.exporter
    return IngestSettings(
        executions_table=s.executions_table,
        workflows_table=s.workflows_table,
        columns=s.columns.model_dump(),
        workflow_columns=s.workflow_columns.model_dump(),
        batch_size=e.batch_size,
        overlap=e.overlap,
        conversion_window=e.conversion_window,
        conversion_windows=dict(e.conversion_windows),
        valid_from=s.valid_from,
        valid_until=s.valid_until,
    )


def store_dsn(cfg: Config) -> str:
    """The store DSN, defaulting to the source's."""
    return cfg.store.dsn or cfg.source.dsn


def error_reason(exc: BaseException) -> str:
    """A stable label for a poll error."""
    if isinstance(exc, asyncpg.QueryCanceledError):
        return "statement_timeout"
    if is_unreachable(exc) or isinstance(
        exc, (*CONNECT_ERRORS, asyncpg.InterfaceError, ConnectionError)
    ):
        return "unreachable"
    if isinstance(exc, asyncpg.PostgresError):
        return "database_error"
    return "internal"


@dataclass(slots=True)
class ExporterState:
    """What the exporter knows about itself, for self-metrics and health."""

    started_at: float = field(default_factory=time.time)
    last_success: float | None = None
    last_result: PollResult | None = None
    last_refresh: RefreshResult | None = None
    errors: Counter = field(default_factory=Counter)
    rows: Counter = field(default_factory=Counter)
    newest_updated_at: datetime | None = None
    is_leader: bool = False
    health: Health = field(default_factory=Health)
    """Which database answered: what the self-metrics and readiness report."""


class ExporterService:
    """Owns the store and source pools and runs ingestion on a schedule."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.state = ExporterState()
        self.store: asyncpg.Pool | None = None
        self.source: asyncpg.Pool | None = None
        self.backend: Backend | None = None
        self.ingestor: Ingestor | None = None
        self.leadership = Leadership(
            store_dsn(cfg),
            cfg.exporter.lock_id,
            self._leader_changed,
            cfg.store.statement_timeout,
        )
        self._takes = 0
        self._last_refresh = 0.0
        self._poll_lock = asyncio.Lock()
        self.listeners: list[Callable[[PollResult | None, BaseException | None], None]] = [
            self._on_poll
        ]
        self._poll_backoff = self._backoff()
        self._next_poll = 0.0
        self._probe_task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Create the store and source pools; they connect on first use, so this never waits."""
        st = self.cfg.store
        if self.store is None:
            self.store = await lazy_pool(
                store_dsn(self.cfg),
                max_size=st.pool_max_size,
                statement_timeout=st.statement_timeout,
                application_name="wfa-exporter",
            )
        if self.source is None:
            self.source = await lazy_pool(
                self.cfg.source.dsn,
                max_size=2,
                statement_timeout=self.cfg.source.statement_timeout,
                application_name="wfa-exporter-source",
            )

    async def open(self, *, forever: bool = False) -> None:
        """Connect, pick the backend and migrate the schema, retrying while the store is down.

        Retries `store.connect_retries` times, or for ever (until cancelled) with `forever`;
        the delay doubles from `store.connect_retry_delay` up to `store.connect_retry_max_delay`.
        """
        await self.connect()
        assert self.store is not None
        st = self.cfg.store
        store = self.store

        async def prepare() -> Backend:
            try:
                async with store.acquire() as conn:
                    backend = await backend_for(conn, st)
                    await migrate(conn, backend)
                    await backend.maintain(conn, datetime.now(UTC))
                    return backend
            except Exception as exc:
                if is_unreachable(exc):
                    self.state.health.set("store", False, describe(exc))
                    await store.expire_connections()
                raise

        self.backend = await retry_unreachable(
            prepare,
            "store",
            retries=None if forever else st.connect_retries,
            backoff=self._backoff(),
        )
        self.ingestor = Ingestor(ingest_settings(self.cfg), self.backend)
        self.state.health.set("store", True)
        await warm_up(store, st.pool_min_size)
        await self.check_health()

    def _backoff(self) -> Backoff:
        st = self.cfg.store
        return Backoff(
            st.connect_retry_delay.total_seconds(), st.connect_retry_max_delay.total_seconds()
        )

    @property
    def opened(self) -> bool:
        """Whether `open()` has completed (store reachable, schema in place)."""
        return self.ingestor is not None

    async def check_health(self) -> None:
        """Probe the store and the source pool apart and record which one answers."""
        for what, pool in (("store", self.store), ("source", self.source)):
            if pool is None:
                continue
            up = await probe(pool)
            if up is None:
                continue
            if not up and getattr(self.state.health, f"{what}_up"):
                await pool.expire_connections()
            self.state.health.set(what, up, "no answer to a probe" if not up else "")

    def _on_poll(self, result: PollResult | None, exc: BaseException | None) -> None:
        """Health after a poll: both databases answered, or probe which one does not.

        The exception alone cannot say which database failed (a source connection lost
        mid-cycle can surface as a store-side error, and the other way round), so each pool
        is probed apart. Scheduled polls back off while cycles keep failing.
        """
        if result is not None:
            self.state.health.set("store", True)
            self.state.health.set("source", True)
            self._poll_backoff.reset()
            self._next_poll = 0.0
            return
        if exc is not None:
            self._next_poll = time.monotonic() + self._poll_backoff.next_delay()
            if self._probe_task is None or self._probe_task.done():
                self._probe_task = asyncio.create_task(self.check_health(), name="wfa-probe")

    def _leader_changed(self, held: bool) -> None:
        self.state.is_leader = held

    async def _leader(self, wait: timedelta | None = None, take_over: bool = False) -> bool:
        """Hold the fenced poll lock; after a takeover, forget every cached store state."""
        assert self.ingestor
        if not await self.leadership.acquire(wait, take_over):
            return False
        if self.leadership.takes != self._takes:
            # Another replica may have written since this one last led, or the store was
            # restored from a backup (which can hand out an epoch held before): read it all
            # again.
            self.ingestor.reset()
            self.ingestor.backend.reset()
            self._takes = self.leadership.takes
        return True

    async def poll_once(self, refresh: bool = True) -> PollResult | None:
        """One poll cycle (until caught up) and a rollup refresh; None on a standby replica.

        A cycle that completes records its start as the store's freshness (`data_as_of`).
        """
        async with self._poll_lock:
            started = datetime.now(UTC)
            result = await self._poll(refresh)
            if result is not None:
                await self._mark_caught_up(started)
            return result

    async def _mark_caught_up(self, started: datetime) -> None:
        assert self.store is not None
        try:
            async with self.store.acquire() as conn:
                await health.mark_caught_up(conn, started)
        except Exception as exc:
            # Freshness only stays behind: the next cycle records it again.
            log.warning("could not record the poll's freshness: %s", describe(exc))

    async def _poll(self, refresh: bool) -> PollResult | None:
        assert self.store and self.source and self.ingestor and self.backend
        try:
            if not await self._leader():
                return None
            async with contextlib.AsyncExitStack() as stack:
                st = await stack.enter_async_context(self.store.acquire())
                src = await stack.enter_async_context(self.source.acquire())
                lookup = None
                if self.cfg.store.pool_max_size > 1:
                    lookup = await stack.enter_async_context(self.store.acquire())
                result = await self.ingestor.poll(src, st, lookup, self.leadership)
                due = time.monotonic() - self._last_refresh
                every = self.cfg.exporter.refresh_interval.total_seconds()
                if refresh and (result.written or result.rejected or due >= every):
                    await self.refresh_rollups(st)
        except NotLeader as exc:
            log.warning("poll stopped, this replica no longer leads: %s", exc)
            await self.leadership.release()
            return None
        except Exception as exc:
            # Counted by reason here; logged by whoever called (the poll job, a refresh).
            self.state.errors[error_reason(exc)] += 1
            await self.leadership.release()
            for cb in self.listeners:
                cb(None, exc)
            raise
        self.state.last_success = time.time()
        self.state.last_result = result
        self.state.rows.update(result.rows)
        if result.newest is not None:
            self.state.newest_updated_at = max(
                result.newest, self.state.newest_updated_at or result.newest
            )
        for cb in self.listeners:
            cb(result, None)
        return result

    async def refresh_rollups(self, conn: asyncpg.Connection | None = None) -> RefreshResult:
        """Bring the rollups up to date (on `conn`, or a store connection) and record it."""
        assert self.store is not None and self.backend is not None
        if conn is None:
            async with self.store.acquire() as own:
                return await self.refresh_rollups(own)
        self.state.last_refresh = await self.backend.refresh(conn)
        self._last_refresh = time.monotonic()
        return self.state.last_refresh

    async def _poll_job(self) -> None:
        # While a database is unreachable, polls back off (so the failure is logged once per
        # backoff level, not every interval); a failed cycle is counted by reason in _poll
        # and by the job runner, which logs it.
        if time.monotonic() < self._next_poll:
            return
        await self.poll_once()

    async def _health_job(self) -> None:
        await self.check_health()

    async def reconcile_once(
        self, wait: timedelta | None = None, take_over: bool = False
    ) -> ReconcileResult | None:
        """Compare source and store per (workflow, day) and re-ingest the days that differ;
        None when another replica holds the poll lock."""
        assert self.store and self.source and self.ingestor
        async with self._poll_lock:
            if not await self._leader(wait, take_over):
                return None
            try:
                async with self.store.acquire() as st, self.source.acquire() as src:
                    return await reconcile(self.cfg, self.ingestor, src, st, self.leadership)
            except NotLeader as exc:
                log.warning("reconcile stopped, this replica no longer leads: %s", exc)
                await self.leadership.release()
                return None

    async def _reconcile_job(self) -> None:
        result = await self.reconcile_once()
        if result is not None:
            log.info("reconcile: %s", result.summary())

    async def _maintain_job(self) -> None:
        assert self.store and self.backend
        async with self.store.acquire() as conn:
            await self.backend.maintain(conn, datetime.now(UTC))

    async def _retention_job(self) -> None:
        assert self.store and self.backend
        try:
            async with self.store.acquire() as conn:
                await retention.run(
                    conn,
                    self.cfg,
                    self.backend,
                    dry_run=False,
                    trigger="scheduler",
                    actor="scheduler",
                )
        except retention.RetentionBusy:
            log.info("retention skipped: another run is in progress")

    def watch(self, jobs: Jobs) -> None:
        """Add the health probe job (first run now); usable before `open()` succeeds."""
        jobs.every("health", self._health_job, HEALTH_INTERVAL, datetime.now(UTC))

    def start(self, jobs: Jobs) -> None:
        """Add the exporter's jobs (after `open()`): poll, maintenance, retention, reconcile."""
        e = self.cfg.exporter
        now = datetime.now(UTC)
        if jobs.get_job("health") is None:
            self.watch(jobs)
        jobs.every("poll", self._poll_job, e.poll_interval, now)
        jobs.every("maintain", self._maintain_job, MAINTAIN_INTERVAL)
        jobs.every(
            "retention", self._retention_job, self.cfg.retention.run_interval,
            now + RETENTION_FIRST_RUN,
        )
        if e.reconcile_interval is not None:
            jobs.every(
                "reconcile", self._reconcile_job, e.reconcile_interval,
                now + e.reconcile_interval,
            )

    async def close(self, grace: float | None = None) -> None:
        """Give up the poll lock and close the pools; with `grace`, terminate the connections
        whose work outlasts it."""
        if self._probe_task is not None:
            self._probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._probe_task
        await self.leadership.release()
        await close_pools([self.source, self.store], grace)
